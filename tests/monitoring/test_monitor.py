"""Monitoring decisions end to end on the shared local stack (moto S3 + MLflow server).

A small champion is trained once with `workloads.train.train`; captures are written in the
documented layout (what `mlops serve` writes), each test on its own endpoint.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from workloads.monitoring.monitor import MonitorConfig, MonitorError, as_signature_types, monitor
from workloads.data.sample import generate
from workloads.environment import StackOutputs

pytestmark = pytest.mark.servers
MODEL = "monitor-churn"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def champion(local_stack: StackOutputs) -> dict:
    from workloads.training.job import TrainingSpec, train

    spec = TrainingSpec.parse({
        "name": MODEL, "dataset": {"name": MODEL}, "target": "churned", "exclude": ["customer_id"],
        "metric": "roc_auc", "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
        "search": {"n_iter": 1, "cv": 2}, "seed": 3,
    })
    result = train(spec, local_stack, data=generate(1500, seed=1), progress=False)
    assert result.decision == "champion"
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")
    return {"version": result.version, "model": model, "spec": spec}


def _versions() -> int:
    from mlflow.tracking import MlflowClient

    return len(MlflowClient().search_model_versions(f"name='{MODEL}'"))


def capture(outputs: StackOutputs, endpoint: str, df: pd.DataFrame, model, version: str,
            at: datetime = NOW, labels_dir: Path | None = None) -> Path | None:
    """Write `df` (with labels) as served traffic: one request per 25 rows; labels to a CSV."""
    features = df.drop(columns=["churned", "customer_id"], errors="ignore")
    frame = features.copy()
    request_ids = [f"req-{uuid.uuid4().hex[:8]}" for _ in range((len(df) + 24) // 25)]
    frame["_request_id"] = [request_ids[i // 25] for i in range(len(df))]
    frame["_row"] = [i % 25 for i in range(len(df))]
    frame["_ts"] = pd.Timestamp(at - timedelta(minutes=5))
    frame["_model_name"], frame["_model_version"] = MODEL, version
    inputs = as_signature_types(features, model)
    complete = len(features.columns) == 10  # a broken payload could not have been scored
    frame["_prediction"] = model.predict(inputs) if complete else 0
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    key = f"captures/{endpoint}/dt={at:%Y-%m-%d}/hour={at:%H}/{uuid.uuid4().hex}.parquet"
    outputs.s3_client().put_object(Bucket=outputs.capture_bucket, Key=key, Body=buffer.getvalue())
    if labels_dir is None or "churned" not in df.columns:
        return None
    path = labels_dir / f"{endpoint}-labels.csv"
    pd.DataFrame({"request_id": frame["_request_id"], "row": frame["_row"], "label": df["churned"]}).to_csv(
        path, index=False)
    return path


def _run_tags(run_id: str) -> tuple[str, dict[str, str]]:
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    return run.info.status, run.data.tags


def test_no_drift_means_no_alert_and_no_retraining(local_stack, local_workdir, champion, tmp_path) -> None:
    steady = generate(400, seed=21)
    labels = capture(local_stack, "steady", steady, champion["model"], champion["version"], labels_dir=tmp_path)
    before = _versions()
    result = monitor("steady", MODEL, local_stack, labels=str(labels), workdir=tmp_path, now=NOW)
    assert result.status == "ok", result.reasons
    assert result.drift is not None and result.drift.n_drifted <= 1 and result.drift.prediction is not None
    assert result.performance is not None and not result.performance.decayed
    assert result.alert is None and result.retraining is None
    assert _versions() == before
    status, tags = _run_tags(result.run_id)
    assert status == "FINISHED" and tags["mlops.monitor.status"] == "ok"
    import mlflow

    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=result.run_id)}
    assert {"report.html", "summary.json", "plots"} <= artifacts
    html = mlflow.artifacts.load_text(f"runs:/{result.run_id}/report.html")
    assert "data:image/png;base64," in html and "tenure_months" in html
    summary = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/summary.json"))
    assert summary["status"] == "ok" and summary["model_version"] == champion["version"]


def test_drift_alerts_and_retrains_exactly_once_within_cooldown(local_stack, champion, tmp_path) -> None:
    shifted = generate(400, seed=22, shift=1.0)
    labels = capture(local_stack, "shifted", shifted, champion["model"], champion["version"], labels_dir=tmp_path)
    before = _versions()
    first = monitor("shifted", MODEL, local_stack, labels=str(labels), workdir=tmp_path, now=NOW)
    assert first.status == "drift" and first.drift_detected
    drifted = {f.name for f in first.drift.features if f.drifted}
    assert {"monthly_charges", "support_calls"} <= drifted
    assert first.alert is not None and first.alert.channels == ["file"]
    alert = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert alert["status"] == "drift" and alert["endpoint"] == "shifted"
    assert first.retraining is not None and first.retraining.triggered, first.retraining
    assert first.retraining.error is None and first.retraining.version is not None
    assert _versions() == before + 1

    second = monitor("shifted", MODEL, local_stack, labels=str(labels), workdir=tmp_path, now=NOW)
    assert second.status == "drift"
    assert not second.retraining.triggered and "cooldown" in second.retraining.reason
    assert _versions() == before + 1


def test_two_concurrent_monitors_retrain_once(local_stack, local_workdir, champion, tmp_path) -> None:
    raced = generate(400, seed=23, shift=1.0)
    labels = capture(local_stack, "raced", raced, champion["model"], champion["version"], labels_dir=tmp_path)
    before = _versions()
    command = [sys.executable, "-m", "workloads.cli", "monitor", "--endpoint", "raced", "--model", MODEL,
               "--labels", str(labels), "--workdir", str(local_workdir), "--json"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    assert [r["status"] for r in results] == ["drift", "drift"]
    assert sorted(r["retraining"]["triggered"] for r in results) == [False, True]
    skipped = next(r for r in results if not r["retraining"]["triggered"])
    assert "in flight" in skipped["retraining"]["reason"] or "cooldown" in skipped["retraining"]["reason"]
    assert _versions() == before + 1


def test_empty_and_small_windows_are_insufficient_data(local_stack, champion, tmp_path) -> None:
    empty = monitor("silent", MODEL, local_stack, workdir=tmp_path, now=NOW)
    assert empty.status == "insufficient_data" and empty.alert is None and empty.retraining is None
    capture(local_stack, "trickle", generate(50, seed=24), champion["model"], champion["version"])
    small = monitor("trickle", MODEL, local_stack, workdir=tmp_path, now=NOW)
    assert small.status == "insufficient_data" and "50 captured rows" in small.reasons[0]
    assert _run_tags(small.run_id)[1]["mlops.monitor.status"] == "insufficient_data"
    # the window is by time: old captures are outside a 1-hour window
    capture(local_stack, "stale", generate(300, seed=25), champion["model"], champion["version"],
            at=NOW - timedelta(hours=5))
    old = monitor("stale", MODEL, local_stack, config=MonitorConfig(window_hours=1), workdir=tmp_path, now=NOW)
    assert old.status == "insufficient_data" and old.window["rows"] == 0
    by_records = monitor("stale", MODEL, local_stack, config=MonitorConfig(window_records=250), workdir=tmp_path,
                         now=NOW)
    assert by_records.window["rows"] == 250 and by_records.status == "ok"
    assert not (tmp_path / "alerts.jsonl").exists()


def test_missing_column_is_data_integrity_failure(local_stack, champion, tmp_path) -> None:
    broken = generate(300, seed=26).drop(columns=["contract"])
    capture(local_stack, "broken", broken, champion["model"], champion["version"])
    before = _versions()
    result = monitor("broken", MODEL, local_stack, workdir=tmp_path, now=NOW)
    assert result.status == "data_integrity_failure" and result.exit_code == 3
    assert any("'contract' is missing" in r for r in result.reasons)
    assert result.alert is not None and result.retraining is None
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["status"] == "data_integrity_failure"
    assert _versions() == before


def test_s3_down_fails_clearly_and_triggers_nothing(local_stack, champion, tmp_path) -> None:
    capture(local_stack, "outage", generate(400, seed=27, shift=1.0), champion["model"], champion["version"])
    with socket.socket() as s:  # a port nobody listens on: the S3 endpoint is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = local_stack.model_copy(update={"s3_endpoint": dead})
    before = _versions()
    with pytest.raises(MonitorError, match="object storage failed") as caught:
        monitor("outage", MODEL, down, workdir=tmp_path, now=NOW)
    local_stack.apply_env()
    assert _versions() == before and not (tmp_path / "alerts.jsonl").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("monitoring/outage").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "mlops.monitor.status" not in runs[0].data.tags
    assert runs[0].data.tags["mlops.monitor.error"] == str(caught.value)
    # after recovery the same monitor works
    again = monitor("outage", MODEL, local_stack, workdir=tmp_path, now=NOW, config=MonitorConfig(retrain=False))
    assert again.status == "drift"


def test_monitor_in_the_cluster_creates_the_job_instead_of_training(
        api_server, mounted, local_stack, champion, monkeypatch, tmp_path) -> None:
    """The monitor's in-cluster branch, end to end against the local stack and the fake API server."""
    from mlflow.tracking import MlflowClient

    url, received, _ = api_server
    jobs, token = mounted
    monkeypatch.setenv("MLOPS_RETRAIN_JOBS_DIR", str(jobs))
    monkeypatch.setenv("MLOPS_KUBE_API", url)
    monkeypatch.setenv("MLOPS_KUBE_TOKEN_DIR", str(token))
    shifted = generate(400, seed=31, shift=1.0)
    labels = capture(local_stack, "in-cluster", shifted, champion["model"], champion["version"], labels_dir=tmp_path)
    versions = len(MlflowClient().search_model_versions(f"name='{MODEL}'"))

    result = monitor("in-cluster", MODEL, local_stack, labels=str(labels), workdir=tmp_path, now=NOW)

    assert result.status == "drift" and result.retraining.triggered, result.retraining
    assert "created retraining Job(s) train-churn-retrain-1, train-churn-select-retrain-2" in result.retraining.reason
    assert len(MlflowClient().search_model_versions(f"name='{MODEL}'")) == versions  # the Job trains, not us
    data_uri = received[0][1]["spec"]["template"]["spec"]["containers"][0]["args"][-1]
    bucket, key = data_uri.removeprefix("s3://").split("/", 1)
    assert bucket == local_stack.capture_bucket and key.startswith("monitoring/in-cluster/retrain/")
    newest = pd.read_parquet(io.BytesIO(local_stack.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert len(newest) == 1500 + 400  # the reference plus every labelled captured row



def test_experiment_created_by_a_concurrent_monitor_is_reused() -> None:
    """Two monitors can both see no experiment; the loser of the create race uses the winner's."""
    from types import SimpleNamespace

    from mlflow.exceptions import RestException

    from workloads.monitoring.monitor import _experiment_id

    class Client:
        def __init__(self) -> None:
            self.created = False

        def get_experiment_by_name(self, name):
            return SimpleNamespace(experiment_id="7") if self.created else None

        def create_experiment(self, name):
            self.created = True  # the other monitor won
            raise RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"{name} exists"})

    assert _experiment_id(Client(), "monitoring/raced") == "7"
