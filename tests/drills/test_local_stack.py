"""Drill: `mlops local up` twice, `down` with stale pid files, a port taken by someone else.

tests/workloads/test_local.py covers the Python API (up twice, a pid file whose pid now belongs
to a foreign process, an explicit port in use). These add what a user sees through the CLI
and the two cases it leaves out: a pid file of a process that is gone, and the port the stack
used last time taken by someone else in the meantime.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from workloads.devstack.processes import ProcessRecord
from workloads.devstack.stack import LocalConfig, LocalStack

pytestmark = pytest.mark.servers
MLOPS = [sys.executable, "-m", "workloads.cli", "local"]


def _mlops(*args: str, workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "COLUMNS": "200"}
    return subprocess.run([*MLOPS, *args, "--workdir", str(workdir)], env=env, capture_output=True, text=True,
                          timeout=180)


def _squatter() -> tuple[subprocess.Popen, int]:
    """Someone else's process listening on a 127.0.0.1 port."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import socket,sys,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
         "print(s.getsockname()[1], flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    return proc, int(proc.stdout.readline())


def test_cli_up_twice_says_already_running_and_starts_nothing(local_stack, local_workdir: Path) -> None:
    before = LocalStack(local_workdir).status()["components"]
    again = _mlops("up", workdir=local_workdir)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and local_stack.tracking_uri in again.stdout
    assert LocalStack(local_workdir).status()["components"] == before


def test_cli_down_with_stale_pid_files_kills_nothing_and_cleans_up(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    foreign = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        pids = tmp_path / "pids"
        pids.mkdir()
        # A server that died without `down`, and a pid file whose pid now belongs to someone else.
        (pids / "tracking.pid").write_text(ProcessRecord(pid=gone.pid, start_time=1, cmdline=["mlflow"],
                                                         port=1).model_dump_json())
        (pids / "s3.pid").write_text(ProcessRecord(pid=foreign.pid, start_time=1, cmdline=["moto"],
                                                   port=2).model_dump_json())
        down = _mlops("down", workdir=tmp_path)
        assert down.returncode == 0, down.stderr
        assert "local stack down" in down.stdout
        assert foreign.poll() is None, "someone else's process was killed"
        assert list(pids.iterdir()) == []
        status = _mlops("status", workdir=tmp_path)
        assert status.returncode == 1 and "stopped" in status.stdout
    finally:
        foreign.kill()
        foreign.wait()


def test_cli_explicit_port_taken_by_someone_else(tmp_path: Path) -> None:
    squatter, port = _squatter()
    try:
        up = _mlops("up", "--s3-port", str(port), workdir=tmp_path)
        assert up.returncode == 1
        assert f"port {port} on 127.0.0.1 (--s3-port) is already in use" in up.stderr
        assert "Traceback" not in up.stderr
        assert squatter.poll() is None
        assert not (tmp_path / "outputs.json").exists()
        assert not LocalStack(tmp_path).status()["running"]
    finally:
        os.killpg(squatter.pid, 9)
        squatter.wait()


def test_last_ports_taken_meanwhile_moves_to_free_ports(tmp_path: Path) -> None:
    """`up` reuses last time's ports; if someone took one since, it picks a free one and leaves them be."""
    squatter, port = _squatter()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    (tmp_path / "local.json").write_text(LocalConfig(s3_port=port, tracking_port=free).model_dump_json())
    stack = LocalStack(tmp_path)
    try:
        outputs = stack.up(timeout=180)
        assert outputs.s3_endpoint != f"http://127.0.0.1:{port}"
        assert outputs.tracking_uri == f"http://127.0.0.1:{free}"  # the one still free is kept
        assert squatter.poll() is None
        assert stack.status()["healthy"]
    finally:
        stack.down(snapshot=False)
        os.killpg(squatter.pid, 9)
        squatter.wait()
