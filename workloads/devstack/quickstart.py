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

The endpoint is stopped at the end (its capture is flushed); the stack keeps running
unless `--down` is given, so the MLflow UI stays open for a look around.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from workloads.errors import MlopsError

DEFAULT_WORKDIR = Path(".mlops/quickstart")
ENDPOINT = "churn"
SPEC = Path(__file__).resolve().parents[1] / "specs" / "churn.yaml"


class QuickstartError(MlopsError, RuntimeError):
    kind = "quickstart failed"

    pass


class Sizes(BaseModel):
    train_rows: int = 4000
    window_rows: int = 600
    rows_per_request: int = 20
    seed: int = 7


class Step(BaseModel):
    step: str
    outcome: str
    seconds: float
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


class Endpoint:
    """`mlops serve` in a child process we own (its own session, stopped by pid)."""

    def __init__(self, workdir: Path, model: str) -> None:
        from workloads.devstack.processes import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "logs" / "serve.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "workloads.cli", "serve", "--model", model, "--alias", "champion",
               "--port", str(self.port), "--endpoint-name", ENDPOINT, "--workdir", str(workdir),
               "--capture-flush-seconds", "1", "--poll-seconds", "0", "--bootstrap-poll-seconds", "1"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise QuickstartError(f"the endpoint exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return httpx.get(f"{self.url}/version", timeout=5).json()
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise QuickstartError(f"the endpoint was not ready after {timeout:.0f} s; see {self.log}")

    def captured_rows(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("mlops_capture_records_written"))

    def wait_captured(self, rows: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.captured_rows() < rows:
            if time.monotonic() > deadline:
                raise QuickstartError(f"capture wrote fewer than {rows} rows in {timeout:.0f} s; see {self.log}")
            time.sleep(0.3)

    def reload(self) -> dict[str, Any]:
        httpx.post(f"{self.url}/reload", timeout=120).raise_for_status()
        return httpx.get(f"{self.url}/version", timeout=5).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # flushes the capture buffer on the way out
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def send_traffic(url: str, frame: pd.DataFrame, prefix: str, rows_per_request: int) -> dict[str, Any]:
    """Score `frame` in requests of `rows_per_request` rows, 8 at a time; request ids `<prefix>-<i>`."""
    chunks = [frame.iloc[i:i + rows_per_request] for i in range(0, len(frame), rows_per_request)]

    def post(i: int, client: httpx.Client) -> int:
        body = {"dataframe_split": json.loads(chunks[i].to_json(orient="split", index=False))}
        response = client.post(f"{url}/invocations", json=body, headers={"X-Request-Id": f"{prefix}-{i}"})
        return response.status_code

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: post(i, client), range(len(chunks))))
    errors = sum(s != 200 for s in statuses)
    if errors:
        raise QuickstartError(f"{errors} of {len(statuses)} scoring requests failed")
    return {"requests": len(statuses), "rows": len(frame)}


def labels_for(frame: pd.DataFrame, prefix: str, rows_per_request: int, target: str) -> pd.DataFrame:
    """Ground truth keyed the way the monitor joins it: request id and row within the request."""
    index = pd.RangeIndex(len(frame))
    return pd.DataFrame({"request_id": [f"{prefix}-{i // rows_per_request}" for i in index],
                         "row": index % rows_per_request, "label": frame[target].to_numpy()})


def run(workdir: Path = DEFAULT_WORKDIR, sizes: Sizes | None = None, *, down: bool = False,
        console: Console | None = None) -> Summary:
    from workloads.data import sample
    from workloads.devstack.stack import LocalStack
    from workloads.monitoring.monitor import MonitorConfig, monitor
    from workloads.training.job import TrainingSpec, train

    sizes = sizes or Sizes()
    console = console or Console()
    started = time.monotonic()
    steps: list[Step] = []

    def step(name: str, outcome: str, t0: float, **details: Any) -> None:
        steps.append(Step(step=name, outcome=outcome, seconds=round(time.monotonic() - t0, 2), details=details))
        console.print(f"[green]✓[/green] [bold]{name}[/bold]: {outcome} [dim]({steps[-1].seconds:.1f} s)[/dim]")

    # 1. a fresh local stack: the demo's registry starts empty so its first model is v1
    t0 = time.monotonic()
    stack = LocalStack(workdir)
    if workdir.exists():
        stack.down()
        shutil.rmtree(workdir)
        console.print(f"[dim]removed the previous quickstart in {workdir}[/dim]")
    outputs = stack.up()
    step("local stack", f"S3 at {outputs.s3_endpoint}, MLflow at {outputs.tracking_uri}", t0)

    endpoint: Endpoint | None = None
    try:
        # 2. data and the first champion
        t0 = time.monotonic()
        spec = TrainingSpec.from_yaml(SPEC)
        reference = sample.generate(sizes.train_rows, seed=sizes.seed)
        first = train(spec, outputs, data=reference, progress=False)
        step("train", f"{first.model_name} v{first.version} -> {first.decision} "
             f"({first.metric} {first.holdout_metrics[first.metric]:.4f})", t0, **first.model_dump(mode="json"))

        # 3. the endpoint
        t0 = time.monotonic()
        endpoint = Endpoint(workdir, spec.name)
        served = endpoint.wait_ready()
        step("serve", f"{endpoint.url} serves v{served.get('version')}", t0, version=served)

        config = MonitorConfig(window_records=sizes.window_rows, min_rows=min(200, sizes.window_rows),
                               cooldown_hours=0)
        windows: dict[str, Any] = {}
        # 4. normal traffic, then monitor
        t0 = time.monotonic()
        normal = sample.generate(sizes.window_rows, seed=sizes.seed + 1, labels=False)
        traffic = send_traffic(endpoint.url, normal, "normal", sizes.rows_per_request)
        endpoint.wait_captured(sizes.window_rows)
        step("normal traffic", f"{traffic['requests']} requests, {traffic['rows']} rows captured", t0, **traffic)

        t0 = time.monotonic()
        first_window = monitor(ENDPOINT, spec.name, outputs, config=config, retrain_spec=SPEC, workdir=workdir)
        windows["normal"] = _window(first_window)
        step("monitor (normal)", _describe(first_window), t0, **windows["normal"])

        # 5. drifted traffic; labels arrive later
        t0 = time.monotonic()
        drifted = sample.generate(sizes.window_rows, seed=sizes.seed + 2, shift=1.0, concept_drift=0.5)
        traffic = send_traffic(endpoint.url, drifted.drop(columns=[spec.target]), "drifted",
                               sizes.rows_per_request)
        endpoint.wait_captured(2 * sizes.window_rows)
        labels_path = workdir / "labels" / "drifted.csv"
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        labels_for(drifted, "drifted", sizes.rows_per_request, spec.target).to_csv(labels_path, index=False)
        step("drifted traffic", f"{traffic['requests']} requests; labels in {labels_path}", t0, **traffic)

        # 6. monitor: drift, alert, retraining, the gate
        t0 = time.monotonic()
        second_window = monitor(ENDPOINT, spec.name, outputs, config=config, labels=str(labels_path),
                                retrain_spec=SPEC, workdir=workdir)
        windows["drifted"] = _window(second_window)
        step("monitor (drifted)", _describe(second_window), t0, **windows["drifted"])

        # 7. serving picks up whatever champion is now
        t0 = time.monotonic()
        served = endpoint.reload()
        step("reload", f"the endpoint serves v{served.get('version')}", t0, version=served)

        from mlflow.tracking import MlflowClient

        # Read while the stack is still up: `--down` stops it below.
        champion = MlflowClient(outputs.tracking_uri).get_model_version_by_alias(spec.name, "champion").version
    finally:
        if endpoint is not None:
            endpoint.stop()
        if down:
            stack.down()

    retraining = second_window.retraining
    summary = Summary(
        workdir=str(workdir), tracking_url=outputs.tracking_url or outputs.tracking_uri, endpoint_url=endpoint.url,
        model_name=spec.name, steps=steps, windows=windows,
        versions={"first": {"version": first.version, "decision": first.decision,
                            "holdout_metrics": first.holdout_metrics},
                  "retrained": retraining.model_dump() if retraining else None},
        served_version=str(served.get("version")), champion_version=str(champion),
        seconds=round(time.monotonic() - started, 1),
    )
    (workdir / "summary.json").write_text(summary.model_dump_json(indent=2))
    _print_summary(summary, console, stopped=down)
    return summary


def _window(result: Any) -> dict[str, Any]:
    drift = result.drift
    return {
        "status": result.status, "reasons": result.reasons, "drift_detected": result.drift_detected,
        "drift_share": drift.drift_share if drift else None, "max_psi": drift.max_psi if drift else None,
        "drifted_features": [f.name for f in drift.features if f.drifted] if drift else [],
        "performance": result.performance.model_dump() if result.performance else None,
        "alert": result.alert.model_dump() if result.alert else None, "retraining": result.retraining.model_dump()
        if result.retraining else None, "report_uri": result.report_uri, "run_id": result.run_id,
    }


def _describe(result: Any) -> str:
    text = result.status
    if result.drift:
        text += f", {result.drift.n_drifted}/{len(result.drift.features)} features drifted"
    if result.retraining and result.retraining.triggered:
        text += f"; retrained v{result.retraining.version} -> {result.retraining.decision}"
    else:
        text += "; no retraining"
    return text


def _print_summary(summary: Summary, console: Console, stopped: bool) -> None:
    table = Table(title="quickstart", show_lines=False)
    for column in ("step", "outcome", "seconds"):
        table.add_column(column)
    for s in summary.steps:
        table.add_row(s.step, s.outcome, f"{s.seconds:.1f}")
    console.print(table)
    console.print(f"champion: v{summary.champion_version}; endpoint served v{summary.served_version}")
    drifted = summary.windows.get("drifted", {})
    if drifted.get("report_uri"):
        console.print(f"drift report: {drifted['report_uri']}")
    console.print(f"summary: {Path(summary.workdir) / 'summary.json'}; total {summary.seconds:.0f} s")
    if stopped:
        console.print("the local stack is stopped; `mlops local up --workdir "
                      f"{summary.workdir}` brings it back with everything in it")
    else:
        console.print(f"MLflow UI: {summary.tracking_url}  (stop with `mlops local down --workdir {summary.workdir}`)")
