"""The local stack with real servers: health, outputs contract, buckets, restarts, pid safety."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from workloads.devstack.processes import Processes, ProcessRecord, free_port, group_members, proc_stat
from workloads.devstack.processes import url as local_url  # `url` is a common local name in these tests
from workloads.devstack.servers import BUCKETS, create_buckets, healthy, s3_command, server_env
from workloads.devstack.stack import LocalStack, LocalStackError
from workloads.environment import Environment, StackOutputs, resolve

pytestmark = pytest.mark.servers
MLOPS = [sys.executable, "-m", "workloads.cli"]


def _alive(pid: int) -> bool:
    return proc_stat(pid) is not None


def _our_pids(workdir: Path) -> list[int]:
    """Every live process in the groups the workdir's pid files describe (leaders and children)."""
    pids = []
    for pid_file in (workdir / "pids").glob("*.pid"):
        pids += group_members(ProcessRecord.model_validate_json(pid_file.read_text()))
    return pids


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """A stack of its own (not the shared one) that is always stopped afterwards."""
    stack = LocalStack(tmp_path / "stack")
    yield stack
    stack.down(snapshot=False)


# --- the shared session stack ---------------------------------------------------------------


def test_up_is_healthy_and_writes_the_outputs_contract(local_stack: StackOutputs, local_workdir: Path) -> None:
    written = json.loads((local_workdir / "outputs.json").read_text())
    assert StackOutputs.model_validate(written) == local_stack
    assert written["environment"] == "local" and written["namespace"] is None
    assert {k: written[k] for k in BUCKETS} == BUCKETS
    assert written["tracking_uri"] == written["tracking_url"]
    for url in (written["tracking_uri"], written["s3_endpoint"]):
        assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{local_stack.tracking_uri}/health", timeout=5).text == "OK"
    assert resolve(workdir=local_workdir) == local_stack
    state = LocalStack(local_workdir).status()
    assert state["healthy"] and all(c["healthy"] for c in state["components"].values())


def test_buckets_exist_with_versioning(local_env: Environment) -> None:
    s3 = local_env.s3
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert set(BUCKETS.values()) <= names
    for bucket in BUCKETS.values():
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


def test_up_twice_does_not_start_twice(local_stack: StackOutputs, local_workdir: Path) -> None:
    pids_before = LocalStack(local_workdir).status()["components"]
    again = LocalStack(local_workdir)
    assert again.up() == local_stack
    assert again.was_running
    assert again.status()["components"] == pids_before


def test_up_with_other_options_while_running_is_refused(local_workdir: Path) -> None:
    with pytest.raises(LocalStackError, match="already running with --backend-store-uri"):
        LocalStack(local_workdir, backend_store_uri="postgresql://postgres@127.0.0.1:5432/other").up()


# --- failures that must not hurt anyone ---------------------------------------------------


def test_explicit_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = LocalStack(tmp_path, s3_port=port)
        with pytest.raises(LocalStackError, match=rf"port {port} on 127.0.0.1 \(--s3-port\) is already in use"):
            stack.up()
    assert not stack.status()["running"]
    assert not (tmp_path / "outputs.json").exists()


def test_same_explicit_port_twice_is_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LocalStackError, match="must differ"):
        LocalStack(tmp_path, s3_port=port, tracking_port=port).up()


def test_down_of_a_workdir_that_never_existed_creates_nothing(tmp_path: Path) -> None:
    LocalStack(tmp_path / "typo").down()
    assert not (tmp_path / "typo").exists()


def test_stale_pid_file_of_a_foreign_process_is_never_killed(tmp_path: Path) -> None:
    foreign = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stat = proc_stat(foreign.pid)
        assert stat is not None
        # Same pid, another start time: what a pid file looks like after the pid was reused.
        (tmp_path / "pids").mkdir()
        record = ProcessRecord(pid=foreign.pid, start_time=stat.start_time - 1, cmdline=["moto"], port=1)
        (tmp_path / "pids" / "s3.pid").write_text(record.model_dump_json())
        stack = LocalStack(tmp_path)
        assert not stack.status()["components"]["s3"]["running"]
        stack.down()
        stack.down()
        assert foreign.poll() is None, "the foreign process was signalled"
        assert not (tmp_path / "pids" / "s3.pid").exists()
    finally:
        foreign.kill()
        foreign.wait()


def test_timeout_reports_the_log_and_leaves_nothing_running(own_stack: LocalStack) -> None:
    with pytest.raises(LocalStackError, match="not healthy after the timeout; last lines of .*s3.log"):
        own_stack.up(timeout=0.01)
    assert _our_pids(own_stack.workdir) == []
    assert not own_stack.status()["running"]
    assert not own_stack.outputs_file.exists()


def test_server_that_exits_is_reported_with_its_log(own_stack: LocalStack) -> None:
    own_stack.backend_store_uri = "bogus://nowhere"
    with pytest.raises(LocalStackError, match=r"(?s)tracking server exited with code \d+.*unsupported URI 'bogus://"):
        own_stack.up(timeout=120)
    assert _our_pids(own_stack.workdir) == []
    assert not own_stack.status()["running"]


def test_unreachable_postgres_fails_fast_without_starting_anything(own_stack: LocalStack) -> None:
    own_stack.backend_store_uri = "postgresql://postgres:secret-pw@127.0.0.1:5432/mlops_no_such_database"
    with pytest.raises(LocalStackError, match="backend store .*mlops_no_such_database.*does not exist") as err:
        own_stack.up(timeout=120)
    assert "secret-pw" not in str(err.value)
    assert not (own_stack.workdir / "pids").exists() or not list((own_stack.workdir / "pids").iterdir())


def test_buckets_are_created_in_the_clients_region() -> None:
    """The stack's S3 client takes the user's AWS_REGION (an Environment's): S3 refuses a bare create there."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="k")
        create_buckets(s3)
        create_buckets(s3)  # again: existing buckets are kept
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == set(BUCKETS.values())
        for bucket in BUCKETS.values():
            assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == "eu-west-1"
            assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


def test_down_after_an_unfinished_up_keeps_the_last_snapshot(tmp_path: Path) -> None:
    """An `up` killed mid-restore leaves S3 running without outputs.json: saving it would drop objects."""
    saved = {"buckets": {BUCKETS["data_bucket"]: {"datasets/x/data.parquet": {
        "file": "f" * 64, "etag": '"e"', "content_type": None, "metadata": {}}}}}
    (tmp_path / "s3" / "objects").mkdir(parents=True)
    (tmp_path / "s3" / "manifest.json").write_text(json.dumps(saved))
    (tmp_path / "s3" / "objects" / ("f" * 64)).write_bytes(b"kept")
    processes, port = Processes(tmp_path), free_port()
    address = local_url(port)
    processes.spawn("s3", s3_command(port), port, server_env(address))  # running, empty: nothing restored yet
    processes.wait_healthy("s3", address, lambda: healthy("s3", address), time.monotonic() + 60)

    stack = LocalStack(tmp_path)
    stack.down()
    assert any("never finished starting" in w for w in stack.warnings)
    assert json.loads((tmp_path / "s3" / "manifest.json").read_text()) == saved
    assert (tmp_path / "s3" / "objects" / ("f" * 64)).read_bytes() == b"kept"
    assert not stack.status()["running"]


# --- restarts: own stacks -------------------------------------------------------------------


def _register_tiny_model(env: Environment, name: str) -> list[float]:
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    experiment_id = env.mlflow_client().create_experiment("local-stack-test")  # each test has a fresh store
    with env.tracking(), mlflow.start_run(experiment_id=experiment_id):
        # Explicit requirements: inferring them runs a subprocess and costs seconds.
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, input_example=X[:1],
                                        pip_requirements=["scikit-learn"])
    env.mlflow_client().set_registered_model_alias(name, "champion", info.registered_model_version)
    return model.predict_proba(X)[:, 1].tolist()


def test_down_stops_only_ours_and_up_again_finds_the_registered_model(own_stack: LocalStack) -> None:
    import mlflow

    workdir = str(own_stack.workdir)
    shell = {**os.environ, "MLOPS_WORKDIR": workdir}
    # Through the CLI, as a user would: the servers outlive the `mlops local up` process.
    up = subprocess.run([*MLOPS, "local", "up"], env=shell, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    env = Environment(resolve(workdir=workdir))
    expected = _register_tiny_model(env, "local-restart")
    env.s3.put_object(Bucket=env.outputs.data_bucket, Key="datasets/x/../odd key.txt", Body=b"kept")
    pids = _our_pids(own_stack.workdir)
    assert len(pids) >= 2

    down = subprocess.run([*MLOPS, "local", "down"], env=shell, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids if _alive(pid)] == []
    assert not own_stack.outputs_file.exists()
    # Safe to repeat, and status agrees.
    assert subprocess.run([*MLOPS, "local", "down"], env=shell, capture_output=True, timeout=60).returncode == 0
    status = subprocess.run([*MLOPS, "local", "status", "--json"], env=shell, capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False

    again = Environment(own_stack.up())
    assert not own_stack.was_running
    with again.tracking():
        loaded = mlflow.sklearn.load_model("models:/local-restart@champion")
    assert loaded.predict_proba([[0.0], [1.0], [2.0], [3.0]])[:, 1].tolist() == expected
    body = again.s3.get_object(Bucket=again.outputs.data_bucket, Key="datasets/x/../odd key.txt")["Body"].read()
    assert body == b"kept"


def test_postgres_backend(tmp_path: Path, pg_database: str) -> None:
    import psycopg2

    stack = LocalStack(tmp_path, backend_store_uri=pg_database)
    try:
        outputs = stack.up()
        env = Environment(outputs)
        _register_tiny_model(env, "local-postgres")
        version = env.mlflow_client().get_model_version_by_alias("local-postgres", "champion")
        assert version.version == "1"
        # The registry really lives in the temporary Postgres database, not in a SQLite file.
        with psycopg2.connect(pg_database) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM registered_models")
            assert cur.fetchall() == [("local-postgres",)]
        assert not (tmp_path / "mlflow.db").exists()
        assert "127.0.0.1:5432" not in (tmp_path / "pids" / "tracking.pid").read_text()  # URI kept out of argv

        # The tracking server dies behind our back: `up` (no options) restarts the half-up
        # stack on the same ports and the same Postgres store it recorded.
        os.killpg(stack.status()["components"]["tracking"]["pid"], signal.SIGKILL)
        assert not stack.status()["healthy"]
        again = LocalStack(tmp_path)
        assert again.up() == outputs and not again.was_running
        assert env.mlflow_client().get_model_version_by_alias("local-postgres", "champion").version == "1"
    finally:
        stack.down(snapshot=False)
