"""The quickstart's steps (workloads/devstack/quickstart.py), each timed and recorded.

Each stage runs through its public entry point against the stack's `Environment`:
`training.job.train`, `mlops serve` (a child process), `monitoring.monitor.monitor`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from workloads.data import sample
from workloads.devstack.endpoint import Endpoint, labels_for, send_traffic
from workloads.devstack.quickstart import ENDPOINT, SPEC, Sizes, Step, Summary
from workloads.devstack.stack import LocalStack
from workloads.environment import Environment
from workloads.monitoring.monitor import monitor
from workloads.monitoring.result import MonitorResult, RetrainOutcome
from workloads.settings import MonitorSettings
from workloads.training.gate import GateReport
from workloads.training.job import train
from workloads.training.report import TrainResult
from workloads.training.spec import TrainingSpec

MIN_WINDOW_ROWS = 200  # the monitor's own default; smaller demo windows lower it to their size


class Quickstart:
    """One run of the demo: its stack, the steps done so far and what they found."""

    def __init__(self, workdir: Path, sizes: Sizes, console: Console) -> None:
        self.workdir, self.sizes, self.console = workdir, sizes, console
        self.stack = LocalStack(workdir)
        self.spec = TrainingSpec.from_yaml(SPEC)
        self.started = time.monotonic()
        self.steps: list[Step] = []
        self.first: TrainResult | None = None
        self.windows: dict[str, Any] = {}  # per window: what the monitor found
        self.retraining: RetrainOutcome | None = None  # what the drifted window's monitor did
        self.gate: GateReport | None = None  # the retrained version's gate: both models on both datasets
        self.served: dict[str, Any] = {}  # the endpoint's /version after the reload

    @contextmanager
    def _step(self, name: str) -> Iterator[Step]:
        """Times the block; the block fills in the outcome and details."""
        step, t0 = Step(step=name), time.monotonic()
        yield step
        step.seconds = round(time.monotonic() - t0, 2)
        self.steps.append(step)
        self.console.print(f"[green]✓[/green] [bold]{name}[/bold]: {step.outcome} [dim]({step.seconds:.1f} s)[/dim]")

    def fresh_stack(self) -> Environment:
        """A fresh local stack: the demo's registry starts empty so its first model is v1."""
        with self._step("local stack") as step:
            if self.workdir.exists():
                self.stack.down()
                shutil.rmtree(self.workdir)
                self.console.print(f"[dim]removed the previous quickstart in {self.workdir}[/dim]")
            self.stack.up()
            env = self.stack.environment()
            step.outcome = f"S3 at {env.outputs.s3_endpoint}, MLflow at {env.tracking_uri}"
        return env

    def first_champion(self, env: Environment) -> None:
        with self._step("train") as step:
            reference = sample.generate(self.sizes.train_rows, seed=self.sizes.seed)
            self.first = first = train(self.spec, env, data=reference, progress=False)
            step.outcome = (f"{first.model_name} v{first.version} -> {first.decision} "
                            f"({first.metric} {first.holdout_metrics[first.metric]:.4f})")
            step.details = first.model_dump(mode="json")

    def start_endpoint(self) -> Endpoint:
        with self._step("serve") as step:
            endpoint = Endpoint(self.workdir, self.spec.name, ENDPOINT)
            try:
                served = endpoint.wait_ready()
            except BaseException:
                endpoint.stop()
                raise
            step.outcome, step.details = f"{endpoint.url} serves v{served.get('version')}", {"version": served}
        return endpoint

    def normal_window(self, env: Environment, endpoint: Endpoint) -> None:
        """Traffic like the training data, then the monitor: no drift, no retraining."""
        with self._step("normal traffic") as step:
            normal = sample.generate(self.sizes.window_rows, seed=self.sizes.seed + 1, labels=False)
            traffic = send_traffic(endpoint.url, normal, "normal", self.sizes.rows_per_request)
            traffic.pop("request_ids")  # no labels for this window
            endpoint.wait_captured(self.sizes.window_rows)
            step.outcome, step.details = f"{traffic['requests']} requests, {traffic['rows']} rows captured", traffic
        self._monitor("normal", env)

    def drifted_window(self, env: Environment, endpoint: Endpoint) -> None:
        """Shifted traffic whose labels arrive afterwards, then the monitor: drift, alert, retraining."""
        with self._step("drifted traffic") as step:
            drifted = sample.generate(self.sizes.window_rows, seed=self.sizes.seed + 2, shift=1.0, concept_drift=0.5)
            traffic = send_traffic(endpoint.url, drifted.drop(columns=[self.spec.target]), "drifted",
                                   self.sizes.rows_per_request)
            endpoint.wait_captured(2 * self.sizes.window_rows)
            labels = self.workdir / "labels" / "drifted.csv"
            labels.parent.mkdir(parents=True, exist_ok=True)
            server_ids = traffic.pop("request_ids")  # the labels join on them; too long for the summary
            labels_for(drifted, server_ids, self.sizes.rows_per_request, self.spec.target).to_csv(labels, index=False)
            step.outcome, step.details = f"{traffic['requests']} requests; labels in {labels}", traffic
        self.retraining = self._monitor("drifted", env, labels=labels).retraining
        if self.retraining and self.retraining.version:
            tags = env.mlflow_client().get_model_version(self.spec.name, self.retraining.version).tags
            self.gate = GateReport.from_tags(dict(tags))

    def _monitor(self, window: str, env: Environment, labels: Path | None = None) -> MonitorResult:
        settings = MonitorSettings(
            endpoint=ENDPOINT, model=self.spec.name, window_records=self.sizes.window_rows,
            min_rows=min(MIN_WINDOW_ROWS, self.sizes.window_rows), cooldown_hours=0, retrain_spec=str(SPEC),
            labels=str(labels) if labels else None,
        )
        with self._step(f"monitor ({window})") as step:
            result = monitor(settings, env)
            self.windows[window] = step.details = window_summary(result)
            step.outcome = describe(result)
        return result

    def reload(self, endpoint: Endpoint) -> None:
        """Serving picks up whatever `champion` now points at."""
        with self._step("reload") as step:
            self.served = endpoint.reload()
            step.outcome, step.details = f"the endpoint serves v{self.served.get('version')}", {"version": self.served}
            if self.gate is not None and self.retraining is not None:
                won = self.gate.decision == "champion"
                step.outcome += (f": v{self.retraining.version} won on current traffic" if won else
                                 f": v{self.retraining.version} stayed challenger ({self.gate.reason})")

    def champion_version(self, env: Environment) -> str:
        return str(env.mlflow_client().get_model_version_by_alias(self.spec.name, "champion").version)

    def summary(self, env: Environment, endpoint: Endpoint, champion: str) -> Summary:
        first = self.first
        assert first is not None, "summary before the first training"
        return Summary(
            workdir=str(self.workdir), tracking_url=env.outputs.tracking_url or env.tracking_uri,
            endpoint_url=endpoint.url, model_name=self.spec.name, steps=self.steps, windows=self.windows,
            versions={"first": {"version": first.version, "decision": first.decision,
                                "holdout_metrics": first.holdout_metrics},
                      "retrained": self.retraining.model_dump() if self.retraining else None},
            gate=self.gate.model_dump() if self.gate else None,
            served_version=str(self.served.get("version")), champion_version=champion,
            seconds=round(time.monotonic() - self.started, 1),
        )


def window_summary(result: MonitorResult) -> dict[str, Any]:
    """What the summary keeps of a MonitorResult."""
    drift = result.drift
    return {
        "status": result.status, "reasons": result.reasons, "drift_detected": result.drift_detected,
        "drift_share": drift.drift_share if drift else None, "max_psi": drift.max_psi if drift else None,
        "drifted_features": [f.name for f in drift.features if f.drifted] if drift else [],
        "performance": result.performance.model_dump() if result.performance else None,
        "alert": result.alert.model_dump() if result.alert else None,
        "retraining": result.retraining.model_dump() if result.retraining else None,
        "report_uri": result.report_uri, "run_id": result.run_id,
    }


def describe(result: MonitorResult) -> str:
    text: str = result.status
    if result.drift:
        text += f", {result.drift.n_drifted}/{len(result.drift.features)} features drifted"
    if result.retraining and result.retraining.triggered:
        text += f"; retrained v{result.retraining.version} -> {result.retraining.decision}"
    else:
        text += "; no retraining"
    return text
