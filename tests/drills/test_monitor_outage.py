"""Drill: the S3 endpoint is down when `mlops monitor` runs: exit 1, one clear line, nothing triggered.

tests/monitoring/test_monitor.py::test_s3_down_fails_clearly_and_triggers_nothing covers the Python
API in full (MonitorError, the MLflow run marked FAILED without a status tag, no alert, no new
version, and the next run after recovery works); monitor run twice concurrently is
tests/monitoring/test_monitor.py::test_two_concurrent_monitors_retrain_once. This adds what an
operator (or a CronJob log) sees from the command line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from workloads import layout
from workloads.environment import Environment, StackOutputs

pytestmark = pytest.mark.servers


def test_cli_monitor_with_s3_down(churn_model: dict, local_stack: StackOutputs, tmp_path: Path) -> None:
    client = Environment(local_stack).mlflow_client()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "outputs.json").write_text(local_stack.model_copy(update={"s3_endpoint": dead}).model_dump_json())
    versions = len(client.search_model_versions(f"name='{churn_model['name']}'"))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "workloads.cli", "monitor", "--endpoint", "drill", "--model", churn_model["name"],
         "--workdir", str(tmp_path), "--json"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.strip() == "", "no summary may be printed for a run that did not finish"
    assert "monitoring failed, nothing alerted or retrained" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 6, proc.stderr[-2000:]
    assert not (tmp_path / "alerts.jsonl").exists()
    assert len(client.search_model_versions(f"name='{churn_model['name']}'")) == versions
    experiment = client.get_experiment_by_name(layout.monitoring_experiment("drill"))
    runs = client.search_runs([experiment.experiment_id])  # what the operator finds in MLflow
    assert [r.info.status for r in runs] == ["FAILED"] and "object storage failed" in runs[0].data.tags[
        "mlops.monitor.error"]
