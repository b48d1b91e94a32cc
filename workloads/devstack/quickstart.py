"""`mlops quickstart`: the whole loop on 127.0.0.1, end to end, in one command.

1. local stack up (moto S3 + mlflow server), fresh in its own workdir;
2. generate customer data and train: the first version becomes `champion`;
3. start the serving endpoint (`mlops serve`, a real HTTP server with inference capture);
4. send normal traffic, monitor: no drift, no retraining;
5. send drifted traffic (covariate shift and concept drift); its labels arrive afterwards;
6. monitor: drift detected, alert raised, retraining on reference + labelled captures;
   the registry gate decides champion or challenger;
7. the endpoint reloads and serves whatever `champion` now points at;
8. a summary of every step, also written to `<workdir>/summary.json`.

Each stage runs through its public entry point (`training.job.train`, `mlops serve`,
`monitoring.monitor.monitor`) against the stack's `Environment`. The endpoint is stopped at
the end (its capture is flushed); the stack keeps running unless `--down` is given, so the
MLflow UI stays open for a look around.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from workloads.settings import Settings

DEFAULT_WORKDIR = Path(".mlops/quickstart")
ENDPOINT = "churn"
SPEC = Path(__file__).resolve().parents[1] / "specs" / "churn.yaml"


class Sizes(Settings):
    """How big the demo is (the `mlops quickstart` options)."""

    train_rows: int = Field(4000, ge=200, le=1_000_000, description="Rows of training data.")
    window_rows: int = Field(600, ge=50, le=100_000, description="Rows of traffic per monitoring window.")
    rows_per_request: int = Field(20, ge=1, le=10_000, description="Rows per scoring request.")
    seed: int = Field(7, description="Seed for every generated table.")


class Step(BaseModel):
    step: str
    outcome: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = {}


class Summary(BaseModel):
    workdir: str
    tracking_url: str
    endpoint_url: str
    model_name: str
    steps: list[Step]
    versions: dict[str, Any]
    windows: dict[str, Any]
    served_version: str | None
    champion_version: str | None
    seconds: float
    gate: dict[str, Any] | None = None  # the retrained version's gate (training/gate.py GateReport)


def run(workdir: Path = DEFAULT_WORKDIR, sizes: Sizes | None = None, *, down: bool = False,
        console: Console | None = None) -> Summary:
    """The whole loop (see the module docstring); the summary is also written to `<workdir>/summary.json`."""
    from workloads.devstack.steps import Quickstart  # the stages' imports are paid by this command only

    demo = Quickstart(workdir, sizes or Sizes(), console or Console())
    env = demo.fresh_stack()
    try:
        demo.first_champion(env)
        endpoint = demo.start_endpoint()
        try:
            demo.normal_window(env, endpoint)
            demo.drifted_window(env, endpoint)
            demo.reload(endpoint)
            champion = demo.champion_version(env)  # read while the stack is up: `--down` stops it below
        finally:
            endpoint.stop()
    finally:
        if down:
            demo.stack.down()
    summary = demo.summary(env, endpoint, champion)
    (workdir / "summary.json").write_text(summary.model_dump_json(indent=2))
    print_summary(summary, demo.console, stopped=down)
    return summary


def print_summary(summary: Summary, console: Console, stopped: bool) -> None:
    table = Table(title="quickstart", show_lines=False)
    for column in ("step", "outcome", "seconds"):
        table.add_column(column)
    for s in summary.steps:
        table.add_row(s.step, s.outcome, f"{s.seconds:.1f}")
    console.print(table)
    for line in gate_lines(summary.gate, summary.versions.get("retrained") or {}):
        console.print(line)
    drifted = summary.windows.get("drifted", {})
    if drifted.get("report_uri"):
        console.print(f"drift report: {drifted['report_uri']}")
    console.print(f"summary: {Path(summary.workdir) / 'summary.json'}; total {summary.seconds:.0f} s")
    if stopped:
        console.print("the local stack is stopped; `mlops local up --workdir "
                      f"{summary.workdir}` brings it back with everything in it")
    else:
        console.print(f"MLflow UI: {summary.tracking_url}  (stop with `mlops local down --workdir {summary.workdir}`)")
    console.print(f"[bold]endpoint {ENDPOINT} serves models:/{summary.model_name}@champion = "
                  f"v{summary.served_version}[/bold]")


def gate_lines(gate: dict[str, Any] | None, retrained: dict[str, Any]) -> list[str]:
    """The retraining gate's numbers on both datasets, and its decision with the reason."""
    if gate is None:
        return [f"no gate: {retrained.get('reason', 'no retraining')}"]
    new, old = f"v{retrained.get('version')}", f"v{gate.get('champion_version')}"
    lines = [f"gate ({gate['metric']}), {new} against champion {old}:"]
    recent, holdout = gate.get("recent"), gate["holdout"]
    if recent:
        lines.append(f"  recent labelled rows held back ({recent['rows']}): {new} {recent['challenger']:.4f}, "
                     f"{old} {recent['champion']:.4f}" if recent.get("champion") is not None else
                     f"  recent labelled rows held back ({recent['rows']}): {new} {recent['challenger']:.4f}")
    recorded = holdout.get("champion_recorded")
    lines.append(f"  {old}'s holdout rows ({holdout['rows']}): {new} {holdout['challenger']:.4f}"
                 + (f", {old} recorded {recorded:.4f}" if recorded is not None else ""))
    lines.append(f"decision: {new} -> {gate['decision']} ({gate['reason']})")
    return lines
