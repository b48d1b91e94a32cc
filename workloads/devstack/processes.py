"""Server processes we start and stop ourselves: pid files with start times, ports, logs.

A pid file records the pid, its start time (field 22 of /proc/<pid>/stat) and the command
line, so a later pid reuse by someone else's process is recognised and never signalled. Each
server runs in its own session and process group: stopping signals exactly that group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from workloads.errors import MlopsError

HOST = "127.0.0.1"
STOP_GRACE_SECONDS = 10.0
KILL_GRACE_SECONDS = 5.0


class LocalStackError(MlopsError, RuntimeError):
    """The local stack could not be started or stopped; the message says why."""

    kind = "local stack failed"


class ProcessRecord(BaseModel):
    """What a pid file stores: enough to tell our process from a later one with the same pid."""

    pid: int
    start_time: int  # clock ticks since boot, field 22 of /proc/<pid>/stat
    cmdline: list[str]
    port: int


@dataclass(frozen=True)
class ProcStat:
    state: str
    pgrp: int
    session: int
    start_time: int


def proc_stat(pid: int, *, zombies: bool = False) -> ProcStat | None:
    """State, process group, session and start time of a live process (or a zombie, if asked)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X") and not zombies:
        return None
    return ProcStat(state=fields[0], pgrp=int(fields[2]), session=int(fields[3]), start_time=int(fields[19]))


def is_ours(record: ProcessRecord) -> bool:
    stat = proc_stat(record.pid)
    return stat is not None and stat.start_time == record.start_time


def group_members(record: ProcessRecord) -> list[int]:
    """Live processes in the session and group we created (leader included, if alive).

    Children (mlflow's uvicorn) may outlive the leader. They are ours when the leader is
    ours, or when no process holds the leader's pid any more (so no one else can own the group).
    """
    leader = proc_stat(record.pid)
    if leader is not None and leader.start_time != record.start_time:
        return []  # the pid now belongs to someone else: so does its group
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat is not None and stat.pgrp == stat.session == record.pid and stat.start_time >= record.start_time:
            members.append(int(entry.name))
    return members


def reap(record: ProcessRecord) -> None:
    """Collect our server if it exited as a child of this process, so it doesn't linger as a zombie."""
    stat = proc_stat(record.pid, zombies=True)
    if stat is not None and stat.state == "Z" and stat.start_time == record.start_time:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(record.pid, os.WNOHANG)


def stop(record: ProcessRecord) -> None:
    """SIGTERM our group, then SIGKILL what is left; never a process that isn't ours."""
    leader_ours = is_ours(record)
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, KILL_GRACE_SECONDS)):
        members = group_members(record)
        if not members:
            break
        if leader_ours:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, sig)
        else:  # the leader is gone: signal its leftover members one by one
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap(record)
            if not group_members(record):
                break
            time.sleep(0.1)
    reap(record)
    if group_members(record):
        raise LocalStackError(f"could not stop process group {record.pid} ({' '.join(record.cmdline)})")


def port_free(port: int) -> bool:
    # SO_REUSEADDR like the servers themselves: TIME_WAIT leftovers don't count, listeners do.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Processes:
    """The named servers of one workdir: `pids/<name>.pid` and `logs/<name>.log`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # started by this process

    def pid_file(self, name: str) -> Path:
        return self.workdir / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def record(self, name: str) -> ProcessRecord | None:
        """The pid file's record if it still describes a live process of ours; stale files go."""
        path = self.pid_file(name)
        if not path.exists():
            return None
        try:
            record = ProcessRecord.model_validate_json(path.read_text())
        except ValueError:
            path.unlink(missing_ok=True)
            return None
        if not group_members(record):
            # Dead, or the pid was reused by another process: forget it, never signal it.
            reap(record)
            path.unlink(missing_ok=True)
            return None
        return record

    def spawn(self, name: str, cmd: list[str], port: int, env: dict[str, str]) -> None:
        log = self.log_file(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            # Own session and process group: `stop` signals exactly this group, and Ctrl-C in
            # the terminal that started it doesn't reach the server.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.workdir, start_new_session=True)
        stat = proc_stat(proc.pid)
        record = ProcessRecord(pid=proc.pid, start_time=stat.start_time if stat else 0, cmdline=cmd, port=port)
        tmp = self.pid_file(name).with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        tmp.replace(self.pid_file(name))
        self._children[name] = proc

    def wait_healthy(self, name: str, address: str, healthy: Callable[[], bool], deadline: float) -> None:
        """Until `healthy()`; fails with the log's tail when the server exits or the deadline passes."""
        proc = self._children[name]
        while True:
            if proc.poll() is not None:  # first: a listener that isn't ours may answer on its port
                raise LocalStackError(f"{name} server exited with code {proc.returncode} while starting; "
                                      f"last lines of {self.log_file(name)}:\n{tail(self.log_file(name))}")
            if healthy():
                return
            if time.monotonic() > deadline:
                raise LocalStackError(f"{name} server at {address} not healthy after the timeout; "
                                      f"last lines of {self.log_file(name)}:\n{tail(self.log_file(name))}")
            time.sleep(0.2)

    def stop(self, name: str, on_status: Callable[[str], None]) -> None:
        """Stop `name` if it is ours and running; forget its pid file either way."""
        record = self.record(name)
        if record is not None:
            on_status(f"stopping {name} (pid {record.pid})")
            stop(record)
        proc = self._children.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self.pid_file(name).unlink(missing_ok=True)
