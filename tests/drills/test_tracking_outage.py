"""Drill: the tracking server is killed in the middle of a training run (`mlops train`).

Own local stack (the shared one must not die). The search takes several seconds; the
tracking server's process group is SIGKILLed once the run exists and its spec is logged,
i.e. while the search runs. Expected: the command fails (exit code, a message that says
what failed), no model version is registered, and after `LocalStack.up()` restarts the
stack the same command succeeds.

mlflow's client retries a refused connection 7 times with exponential backoff by default
(about 4 minutes per call); the drill sets MLFLOW_HTTP_REQUEST_MAX_RETRIES=1 for the
training process so it fails within seconds. The retry policy is mlflow's, not ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.drills.conftest import tiny_spec
from workloads.data.sample import generate
from workloads.devstack.stack import LocalStack
from workloads.environment import StackOutputs

pytestmark = pytest.mark.servers
MODEL = "drill-outage"
# Random forests big enough that the search lasts seconds on 2 cores (the kill lands inside it).
SLOW_MODELS = [{"family": "random_forest", "search_space": {"n_estimators": [300, 400], "max_depth": [8, 10]}}]


@dataclass
class Outage:
    stack: LocalStack
    before: StackOutputs
    killed: subprocess.CompletedProcess
    seconds_to_fail: float
    versions_after_restart: list
    rerun: subprocess.CompletedProcess
    after: StackOutputs


def _train_cmd(spec: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "workloads.cli", "train", str(spec), "--workdir", str(workdir), "--json"]


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "COLUMNS": "200"}


def _wait_for_search(tracking_uri: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the training run exists with its spec logged: the next step is the search."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended before the kill: {proc.communicate()}"
        experiment = client.get_experiment_by_name(MODEL)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id])
            if runs and runs[0].data.tags.get("mlops.task") and \
                    "spec.yaml" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}:
                return
        time.sleep(0.1)
    raise AssertionError("the training run did not start")


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("tracking-outage")
    stack = LocalStack(tmp / "stack")
    saved_env = dict(os.environ)
    try:
        before = stack.up(timeout=180)
        data = tmp / "churn.csv"
        generate(3000, seed=11).to_csv(data, index=False)
        spec = tmp / "spec.yaml"
        spec.write_text(yaml.safe_dump(tiny_spec(MODEL, str(data), models=SLOW_MODELS, n_iter=4, cv=3)))

        proc = subprocess.Popen(_train_cmd(spec, stack.workdir), env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        _wait_for_search(before.tracking_uri, proc)
        tracking_pid = stack.status()["components"]["tracking"]["pid"]
        os.killpg(tracking_pid, signal.SIGKILL)  # the server and its uvicorn child, nothing else
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=300)
        killed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        seconds_to_fail = time.monotonic() - killed_at

        after = LocalStack(stack.workdir).up(timeout=180)  # restarts the half-up stack on the same ports
        versions = MlflowClient(after.tracking_uri).search_model_versions(f"name='{MODEL}'")
        rerun = subprocess.run(_train_cmd(spec, stack.workdir), env=_env(), capture_output=True, text=True,
                               timeout=300)
        yield Outage(stack, before, killed, seconds_to_fail, versions, rerun, after)
    finally:
        stack.down(snapshot=False)
        os.environ.clear()
        os.environ.update(saved_env)


def test_killed_tracking_server_fails_the_run_and_registers_nothing(outage: Outage) -> None:
    assert outage.killed.returncode != 0, outage.killed.stdout
    assert outage.killed.stdout.strip() == "", "a failed run printed a result"
    assert outage.before.tracking_uri in outage.killed.stderr  # says which server failed
    assert outage.seconds_to_fail < 120
    assert outage.versions_after_restart == []


def test_rerun_after_restart_succeeds(outage: Outage) -> None:
    import json

    assert outage.after.tracking_uri == outage.before.tracking_uri  # same URL: clients need no change
    assert outage.rerun.returncode == 0, outage.rerun.stderr[-3000:]
    result = json.loads(outage.rerun.stdout)
    assert result["model_name"] == MODEL and result["version"] == "1" and result["decision"] == "champion"
    from mlflow import MlflowClient

    client = MlflowClient(outage.after.tracking_uri)
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert client.get_model_version_by_alias(MODEL, "champion").tags["mlops.dataset.digest"] == \
        result["dataset_digest"]


def test_cli_says_what_failed_without_a_traceback(outage: Outage) -> None:
    stderr = outage.killed.stderr
    assert outage.killed.returncode == 1
    assert "Traceback" not in stderr and "│" not in stderr, stderr[-2000:]
    assert len(stderr.strip().splitlines()) <= 10, stderr[-2000:]
