"""Monitoring decisions end to end on the shared local stack (moto S3 + MLflow server).

A small champion is trained once through the training package; captures are written in the
documented layout (`layout.capture_key`, what `mlops serve` writes), each test on its own endpoint.
Every call gets its `Environment` explicitly: nothing here relies on process-wide MLflow or S3 wiring.
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

import numpy as np
import pandas as pd
import pytest

from workloads import layout
from workloads.data.sample import generate
from workloads.environment import Environment, StackOutputs
from workloads.monitoring.monitor import monitor
from workloads.monitoring.profile import prediction_profile_key
from workloads.monitoring.reference import as_signature_types
from workloads.monitoring.result import MonitorError
from workloads.settings import MonitorSettings

pytestmark = pytest.mark.servers
MODEL = "monitor-churn"
NOW = datetime.now(UTC)


def settings(endpoint: str, **values) -> MonitorSettings:
    return MonitorSettings(endpoint=endpoint, model=MODEL, **values)


@pytest.fixture(scope="module")
def stack_env(local_stack: StackOutputs) -> Environment:
    """The session's local stack as an Environment (its workdir is not used by these tests)."""
    return Environment(local_stack)


@pytest.fixture
def env(local_stack: StackOutputs, tmp_path: Path) -> Environment:
    """The local stack with this test's own workdir (where file alerts go)."""
    return Environment(local_stack, tmp_path)


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list:
    """What the monitor hands to the Pushgateway exporter (export.py has its own tests)."""
    calls: list = []
    monkeypatch.setattr("workloads.monitoring.monitor.push_run", lambda result, **kw: calls.append((result, kw)))
    return calls


@pytest.fixture(scope="module")
def champion(local_stack: StackOutputs, stack_env: Environment) -> dict:
    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    spec = TrainingSpec.parse({
        "name": MODEL, "dataset": {"name": MODEL}, "target": "churned", "exclude": ["customer_id"],
        "metric": "roc_auc", "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
        "search": {"n_iter": 1, "cv": 2}, "seed": 3,
    })
    result = train(spec, stack_env, data=generate(1500, seed=1), progress=False)
    assert result.decision == "champion"
    import mlflow

    with stack_env.tracking():
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")
    return {"version": result.version, "model": model, "spec": spec}


def _versions(env: Environment) -> int:
    return len(env.mlflow_client().search_model_versions(f"name='{MODEL}'"))


def capture(env: Environment, endpoint: str, df: pd.DataFrame, model, version: str,
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
    key = layout.capture_key(endpoint, at, uuid.uuid4().hex)
    env.s3.put_object(Bucket=env.outputs.capture_bucket, Key=key, Body=buffer.getvalue())
    if labels_dir is None or "churned" not in df.columns:
        return None
    path = labels_dir / f"{endpoint}-labels.csv"
    pd.DataFrame({"request_id": frame["_request_id"], "row": frame["_row"], "label": df["churned"]}).to_csv(
        path, index=False)
    return path


def _run_tags(env: Environment, run_id: str) -> tuple[str, dict[str, str]]:
    run = env.mlflow_client().get_run(run_id)
    return run.info.status, run.data.tags


def test_no_drift_means_no_alert_and_no_retraining(env, champion, tmp_path, pushed) -> None:
    steady = generate(400, seed=21)
    labels = capture(env, "steady", steady, champion["model"], champion["version"], labels_dir=tmp_path)
    before = _versions(env)
    result = monitor(settings("steady", labels=str(labels)), env, now=NOW)
    assert result.status == "ok", result.reasons
    assert result.drift is not None and result.drift.n_drifted <= 1 and result.drift.prediction is not None
    assert result.performance is not None and not result.performance.decayed
    assert result.alert is None and result.retraining is None
    assert _versions(env) == before
    status, tags = _run_tags(env, result.run_id)
    assert status == "FINISHED" and tags["mlops.monitor.status"] == "ok"
    import mlflow

    artifacts = {a.path for a in env.mlflow_client().list_artifacts(result.run_id)}
    assert {"report.html", "summary.json", "plots"} <= artifacts
    with env.tracking():
        html = mlflow.artifacts.load_text(f"runs:/{result.run_id}/report.html")
        summary = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/summary.json"))
    assert "data:image/png;base64," in html and "tenure_months" in html
    assert summary["status"] == "ok" and summary["model_version"] == champion["version"]
    assert [r.run_id for r, _ in pushed] == [result.run_id]  # a completed run's figures are pushed


def test_reference_profiles_are_cached_where_the_monitor_may_write(env, champion) -> None:
    """The monitoring role may write only `monitoring/` in the capture bucket; it only reads the data bucket."""
    capture(env, "cached", generate(300, seed=28), champion["model"], champion["version"])
    result = monitor(settings("cached"), env, now=NOW)
    assert result.status == "ok"
    digest = env.mlflow_client().get_model_version(MODEL, result.model_version).tags["mlops.dataset.digest"]

    def keys(bucket: str, prefix: str) -> set[str]:
        pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    profiles = keys(env.outputs.capture_bucket, layout.profile_key(digest, "x").rsplit("/", 1)[0] + "/")
    # This champion's predictions, and the features' profile, which every model trained on this
    # dataset shares (other modules' models on the same data add their own prediction profiles).
    assert prediction_profile_key(digest, MODEL, result.model_version) in profiles, profiles
    assert len(profiles) >= 2, profiles
    assert not [k for k in keys(env.outputs.data_bucket, "") if k.endswith(".npz")]


def test_drift_alerts_and_retrains_exactly_once_within_cooldown(env, champion, tmp_path, monkeypatch) -> None:
    shifted = generate(400, seed=22, shift=1.0)
    labels = capture(env, "shifted", shifted, champion["model"], champion["version"], labels_dir=tmp_path)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the alert file goes to the environment's workdir, never the current directory
    before = _versions(env)
    first = monitor(settings("shifted", labels=str(labels)), env, now=NOW)
    assert first.status == "drift" and first.drift_detected
    drifted = {f.name for f in first.drift.features if f.drifted}
    assert {"monthly_charges", "support_calls"} <= drifted
    assert first.alert is not None and first.alert.channels == ["file"]
    alert = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert alert["status"] == "drift" and alert["endpoint"] == "shifted"
    assert list(elsewhere.iterdir()) == []
    assert first.retraining is not None and first.retraining.triggered, first.retraining
    assert first.retraining.error is None and first.retraining.version is not None
    assert _versions(env) == before + 1

    second = monitor(settings("shifted", labels=str(labels)), env, now=NOW)
    assert second.status == "drift"
    assert not second.retraining.triggered and "cooldown" in second.retraining.reason
    assert _versions(env) == before + 1


def test_a_failure_while_acting_ends_the_run_failed(local_stack, champion, tmp_path, pushed) -> None:
    """The act step (alert, retrain) runs inside the run: its failure marks the run FAILED, not RUNNING."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = Environment(local_stack, blocker / "work")  # the alert file cannot be written there
    capture(env, "act-fails", generate(400, seed=29, shift=1.0), champion["model"], champion["version"])
    with pytest.raises(MonitorError, match="NotADirectoryError") as caught:
        monitor(settings("act-fails"), env, now=NOW)
    client = env.mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name(layout.monitoring_experiment("act-fails")).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["mlops.monitor.state"] == "failed"
    assert runs[0].data.tags["mlops.monitor.error"] == str(caught.value)
    assert "mlops.monitor.status" not in runs[0].data.tags
    assert pushed == []  # nothing pushed: "not run lately" is what a failing monitor looks like


def test_two_concurrent_monitors_retrain_once(env, local_workdir, champion, tmp_path) -> None:
    raced = generate(400, seed=23, shift=1.0)
    labels = capture(env, "raced", raced, champion["model"], champion["version"], labels_dir=tmp_path)
    before = _versions(env)
    command = [sys.executable, "-m", "workloads.cli", "monitor", "--endpoint", "raced", "--model", MODEL,
               "--labels", str(labels), "--workdir", str(local_workdir), "--json"]
    environ = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    assert [r["status"] for r in results] == ["drift", "drift"]
    assert sorted(r["retraining"]["triggered"] for r in results) == [False, True]
    skipped = next(r for r in results if not r["retraining"]["triggered"])
    assert "in flight" in skipped["retraining"]["reason"] or "cooldown" in skipped["retraining"]["reason"]
    assert _versions(env) == before + 1


def test_empty_and_small_windows_are_insufficient_data(env, champion, tmp_path) -> None:
    empty = monitor(settings("silent"), env, now=NOW)
    assert empty.status == "insufficient_data" and empty.alert is None and empty.retraining is None
    capture(env, "trickle", generate(50, seed=24), champion["model"], champion["version"])
    small = monitor(settings("trickle"), env, now=NOW)
    assert small.status == "insufficient_data" and "50 captured rows" in small.reasons[0]
    assert _run_tags(env, small.run_id)[1]["mlops.monitor.status"] == "insufficient_data"
    # the window is by time: old captures are outside a 1-hour window
    capture(env, "stale", generate(300, seed=25), champion["model"], champion["version"],
            at=NOW - timedelta(hours=5))
    old = monitor(settings("stale", window_hours=1), env, now=NOW)
    assert old.status == "insufficient_data" and old.window["rows"] == 0
    by_records = monitor(settings("stale", window_records=250), env, now=NOW)
    assert by_records.window["rows"] == 250 and by_records.status == "ok"
    assert not (tmp_path / "alerts.jsonl").exists()


def test_missing_column_is_data_integrity_failure(env, champion, tmp_path) -> None:
    broken = generate(300, seed=26).drop(columns=["contract"])
    capture(env, "broken", broken, champion["model"], champion["version"])
    before = _versions(env)
    result = monitor(settings("broken"), env, now=NOW)
    assert result.status == "data_integrity_failure" and result.exit_code == 3
    assert any("'contract' is missing" in r for r in result.reasons)
    assert result.alert is not None and result.retraining is None
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["status"] == "data_integrity_failure"
    assert _versions(env) == before


def test_s3_down_fails_clearly_and_triggers_nothing(env, local_stack, champion, tmp_path) -> None:
    capture(env, "outage", generate(400, seed=27, shift=1.0), champion["model"], champion["version"])
    with socket.socket() as s:  # a port nobody listens on: the S3 endpoint is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = Environment(local_stack.model_copy(update={"s3_endpoint": dead}), tmp_path)
    before = _versions(env)
    with pytest.raises(MonitorError, match="object storage failed") as caught:
        monitor(settings("outage"), down, now=NOW)
    assert _versions(env) == before and not (tmp_path / "alerts.jsonl").exists()
    client = env.mlflow_client()
    runs = client.search_runs([client.get_experiment_by_name(layout.monitoring_experiment("outage")).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "mlops.monitor.status" not in runs[0].data.tags
    assert runs[0].data.tags["mlops.monitor.error"] == str(caught.value)
    # after recovery the same monitor works
    again = monitor(settings("outage", retrain=False), env, now=NOW)
    assert again.status == "drift"


def test_monitor_in_the_cluster_creates_the_job_instead_of_training(
        api_server, mounted, env, champion, monkeypatch, tmp_path) -> None:
    """The monitor's in-cluster branch, end to end against the local stack and the fake API server."""
    url, received, _ = api_server
    jobs, token = mounted
    monkeypatch.setenv("MLOPS_RETRAIN_JOBS_DIR", str(jobs))
    monkeypatch.setenv("MLOPS_KUBE_API", url)
    monkeypatch.setenv("MLOPS_KUBE_TOKEN_DIR", str(token))
    # An earlier test's retraining may have promoted v2 (its data is the reference + its captures):
    # this one judges against the fixture's champion and its 1,500-row dataset.
    env.mlflow_client().set_registered_model_alias(MODEL, "champion", champion["version"])
    shifted = generate(400, seed=31, shift=1.0)
    labels = capture(env, "in-cluster", shifted, champion["model"], champion["version"], labels_dir=tmp_path)
    versions = _versions(env)

    result = monitor(settings("in-cluster", labels=str(labels)), env, now=NOW)

    assert result.status == "drift" and result.retraining.triggered, result.retraining
    assert "created retraining Job(s) train-churn-retrain-1, train-churn-select-retrain-2" in result.retraining.reason
    assert _versions(env) == versions  # the Job trains, not us
    args = received[0][1]["spec"]["template"]["spec"]["containers"][0]["args"]
    data_uri = args[args.index("--data") + 1]
    bucket, key = data_uri.removeprefix("s3://").split("/", 1)
    assert bucket == env.outputs.capture_bucket and key == layout.retrain_data_key("in-cluster", result.run_id)
    newest = pd.read_parquet(io.BytesIO(env.s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert len(newest) == 1500 + 400  # the reference plus every labelled captured row
    # the split travels with the data: the Job trains and gates on exactly the rows chosen here
    roles = newest["_split"].value_counts().to_dict()
    assert roles == {"train": 1200, "holdout": 300, "recent_train": 200, "recent_holdout": 200}
    from workloads.training.prepare import prepare

    prep = prepare(champion["spec"], env, newest)
    assert (len(prep.X_train), len(prep.X_hold), int(prep.recent.sum())) == (1400, 500, 200)


# --- the gate after drift (issue 15 section 1) ---------------------------------------------------


def _write_captures(env: Environment, endpoint: str, frame: pd.DataFrame, names: list[str]) -> None:
    """`frame` as one capture file per name, the chunks in the order given (their keys sort differently)."""
    for name, rows in zip(names, np.array_split(np.arange(len(frame)), len(names)), strict=True):
        buffer = io.BytesIO()
        frame.iloc[rows].to_parquet(buffer, index=False)
        env.s3.put_object(Bucket=env.outputs.capture_bucket, Key=layout.capture_key(endpoint, NOW, name),
                          Body=buffer.getvalue())


def test_the_same_captures_listed_in_another_order_give_the_same_digest_and_decision(env, tmp_path) -> None:
    """Two identical champions, the same labelled captures written as files that list in opposite orders
    (all rows captured at one instant, as a flush writes them): the same retraining data and decision."""
    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    names = [f"order-{uuid.uuid4().hex[:6]}-{side}" for side in ("a", "b")]
    for name in names:
        spec = TrainingSpec.parse({
            "name": name, "dataset": {"name": name}, "target": "churned", "exclude": ["customer_id"],
            "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
            "search": {"n_iter": 1, "cv": 2}, "seed": 4})
        assert train(spec, env, data=generate(1200, seed=41), progress=False).decision == "champion"
    drifted = generate(300, seed=42, shift=1.0, concept_drift=0.5)
    frame = drifted.drop(columns=["churned", "customer_id"])
    frame["_request_id"] = [f"r-{i // 20:03d}" for i in range(len(frame))]
    frame["_row"] = [i % 20 for i in range(len(frame))]
    frame["_ts"] = pd.Timestamp(NOW - timedelta(minutes=5))
    frame["_model_name"], frame["_model_version"], frame["_prediction"] = "x", "1", 0
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": frame["_request_id"], "row": frame["_row"], "label": drifted["churned"]}).to_csv(
        labels, index=False)
    files = [f"{i:02d}" for i in range(5)]
    _write_captures(env, names[0], frame, files)
    _write_captures(env, names[1], frame, files[::-1])  # chunk 0 now lists last

    client, found = env.mlflow_client(), []
    for name in names:
        result = monitor(MonitorSettings(endpoint=name, model=name, labels=str(labels), cooldown_hours=0), env,
                         now=NOW)
        assert result.status == "drift" and result.retraining.version == "2", result.retraining
        found.append(client.get_model_version(name, "2").tags)
    digests = [t["mlops.dataset.digest"] for t in found]
    assert digests[0] == digests[1]
    gate = {k: v for k, v in found[0].items() if k.startswith(("mlops.gate.", "mlops.decision"))}
    assert gate == {k: v for k, v in found[1].items() if k.startswith(("mlops.gate.", "mlops.decision"))}
    # judged on the 150 held-back captured rows, guarded by the champion's 240 holdout rows
    assert (gate["mlops.gate.recent.rows"], gate["mlops.gate.holdout.rows"]) == ("150", "240")
    assert gate["mlops.gate.holdout.champion"] == gate["mlops.gate.holdout.champion_recorded"]
