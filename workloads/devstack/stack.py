"""The local stack: moto's S3 server and a real MLflow tracking server on 127.0.0.1.

Same code paths as a provisioned environment (the S3 API, the tracking server over HTTP),
no cloud. Everything lives under one workdir (default `.mlops/local`):

    outputs.json        the stack outputs contract (read by `workloads.stack.resolve`)
    local.json          how the stack was started (ports, backend store), reused by the next `up`
    mlflow.db           the tracking server's SQLite store (unless a postgresql:// URI is given)
    s3/                 the S3 snapshot: manifest.json + objects/<sha256>
    logs/<name>.log     each server's stdout and stderr
    pids/<name>.pid     pid, process start time and command line of each server we started

Persistence of S3: moto's server keeps state in memory only. Its recorder
(`MOTO_ENABLE_RECORDING`) logs every request, reads included, and replays the whole history
on start, so it grows without bound and slows every restart. Instead `down` snapshots the
current version of every object through the S3 API into `s3/` (incrementally, by ETag) and
`up` uploads the snapshot again. Object version history is not kept across restarts, and a
crash without `down` loses the S3 changes since the last `up` (the MLflow database does not).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from workloads.environment import OUTPUTS_FILE, StackOutputs, workdir_from
from workloads.errors import MlopsError

HOST = "127.0.0.1"
BUCKETS = {
    "data_bucket": "mlops-local-data",
    "artifact_bucket": "mlops-local-artifacts",
    "capture_bucket": "mlops-local-capture",
}
COMPONENTS = ("s3", "tracking")
STOP_GRACE_SECONDS = 10.0
# Keys the servers always get: no telemetry, and a fake identity for the fake S3.
LOCAL_AWS_KEY = "mlops-local"


class LocalStackError(MlopsError, RuntimeError):
    kind = "local stack failed"

    """The local stack could not be started or stopped; the message says why."""


class ProcessRecord(BaseModel):
    """What a pid file stores: enough to tell our process from a later one with the same pid."""

    pid: int
    start_time: int  # clock ticks since boot, field 22 of /proc/<pid>/stat
    cmdline: list[str]
    port: int


class LocalConfig(BaseModel):
    """How the stack was last started; `up` reuses it so URLs stay stable across restarts."""

    s3_port: int | None = None
    tracking_port: int | None = None
    backend_store_uri: str | None = None


# --- processes ------------------------------------------------------------------------------


def _proc_stat(pid: int, *, zombies: bool = False) -> dict[str, Any] | None:
    """State, process group, session and start time of a live process (or a zombie, if asked)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    state = fields[0]
    if state in ("Z", "X") and not zombies:
        return None
    return {"state": state, "pgrp": int(fields[2]), "session": int(fields[3]), "start_time": int(fields[19])}


def _is_ours(record: ProcessRecord) -> bool:
    stat = _proc_stat(record.pid)
    return stat is not None and stat["start_time"] == record.start_time


def _group_members(record: ProcessRecord) -> list[int]:
    """Live processes in the session and group we created (leader included, if alive).

    Children (mlflow's uvicorn) may outlive the leader. They are ours when the leader is
    ours, or when no process holds the leader's pid any more (so no one else can own the group).
    """
    leader = _proc_stat(record.pid)
    if leader is not None and leader["start_time"] != record.start_time:
        return []  # the pid now belongs to someone else: so does its group
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if (
            stat is not None
            and stat["pgrp"] == record.pid
            and stat["session"] == record.pid
            and stat["start_time"] >= record.start_time
        ):
            members.append(int(entry.name))
    return members


def _reap(record: ProcessRecord) -> None:
    """Collect our server if it exited as a child of this process, so it doesn't linger as a zombie."""
    stat = _proc_stat(record.pid, zombies=True)
    if stat is not None and stat["state"] == "Z" and stat["start_time"] == record.start_time:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(record.pid, os.WNOHANG)


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like the servers themselves: TIME_WAIT leftovers don't count, listeners do.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _url(port: int) -> str:
    return f"http://{HOST}:{port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _with_driver(uri: str) -> str:
    """`postgresql://` with the psycopg2 driver we depend on: SQLAlchemy 2.1 defaults to psycopg 3."""
    for scheme in ("postgresql://", "postgres://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg2://" + uri[len(scheme):]
    return uri


def _check_database(uri: str) -> None:
    """Fail in seconds on a wrong Postgres URI: mlflow itself retries with backoff for minutes."""
    if not uri.startswith(("postgresql", "postgres:")):
        return
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    try:
        psycopg2.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                         connect_timeout=5).close()
    except psycopg2.Error as exc:
        raise LocalStackError(
            f"cannot connect to the backend store {url.render_as_string(hide_password=True)}: "
            f"{str(exc).strip()}"
        ) from None


def _server_env(s3_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        # The huey job runner (GenAI evaluation jobs) is two more processes we don't use.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_S3_ENDPOINT_URL=s3_url,
        # Never hand real AWS credentials to a local fake.
        AWS_ACCESS_KEY_ID=LOCAL_AWS_KEY,
        AWS_SECRET_ACCESS_KEY=LOCAL_AWS_KEY,
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


# --- the stack ------------------------------------------------------------------------------


class LocalStack:
    """Start, stop and inspect the local stack living in `workdir`.

    `up` is idempotent (a running, healthy stack is returned as is) and `down` is safe to
    repeat; both hold an exclusive lock on the workdir so two commands never race.
    """

    def __init__(
        self,
        workdir: Path | str,
        backend_store_uri: str | None = None,
        *,
        s3_port: int | None = None,
        tracking_port: int | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = Path(workdir).expanduser().resolve()
        self.backend_store_uri = backend_store_uri
        self.s3_port = s3_port
        self.tracking_port = tracking_port
        self.on_status = on_status or (lambda _msg: None)
        self.was_running = False  # set by up(): True when it found the stack already up
        self.warnings: list[str] = []  # things the user should know that didn't stop the command
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def at(cls, workdir: Path | str | None, **kwargs: Any) -> LocalStack:
        """The stack in `workdir`, else $MLOPS_WORKDIR, else `.mlops/local` (as the CLI resolves it)."""
        return cls(workdir_from(workdir), **kwargs)

    # paths
    @property
    def outputs_file(self) -> Path:
        return self.workdir / OUTPUTS_FILE

    def _pid_file(self, name: str) -> Path:
        return self.workdir / "pids" / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    @property
    def _config_file(self) -> Path:
        return self.workdir / "local.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # pid files
    def _record(self, name: str) -> ProcessRecord | None:
        """The pid file's record if it still describes a live process of ours; stale files go."""
        path = self._pid_file(name)
        if not path.exists():
            return None
        try:
            record = ProcessRecord.model_validate_json(path.read_text())
        except ValueError:
            path.unlink(missing_ok=True)
            return None
        if not _group_members(record):
            # Dead, or the pid was reused by another process: forget it, never signal it.
            _reap(record)
            path.unlink(missing_ok=True)
            return None
        return record

    # health
    def _healthy(self, name: str, url: str) -> bool:
        try:
            if name == "tracking":
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            self._s3(url).list_buckets()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
            return False

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _s3(url: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=LOCAL_AWS_KEY,
            aws_secret_access_key=LOCAL_AWS_KEY,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 1},
                          max_pool_connections=16),
        )

    def status(self) -> dict[str, Any]:
        """Per component: pid, URL, running, healthy; plus overall `running` and `healthy`."""
        components: dict[str, dict[str, Any]] = {}
        for name in COMPONENTS:
            record = self._record(name)
            url = _url(record.port) if record else None
            components[name] = {
                "pid": record.pid if record else None,
                "url": url,
                "running": record is not None,
                "healthy": bool(record and url and self._healthy(name, url)),
                "log": str(self._log_file(name)),
            }
        return {
            "workdir": str(self.workdir),
            "running": any(c["running"] for c in components.values()),
            "healthy": all(c["healthy"] for c in components.values()),
            "components": components,
        }

    # up
    def up(self, timeout: float = 120) -> StackOutputs:
        """Start both servers (unless already up), wait until healthy, write outputs.json."""
        with self._locked():
            state = self.status()
            if state["healthy"] and self.outputs_file.exists():
                self._check_matches_running()
                self.was_running = True
                self.on_status(f"local stack already running in {self.workdir}")
                return StackOutputs.model_validate_json(self.outputs_file.read_text())
            if state["running"]:
                # Half up (one server died, or a crash): start clean rather than guess.
                self.on_status("local stack partly running: stopping it first")
                self._stop_all(snapshot=True)
            return self._start(timeout)

    def _check_matches_running(self) -> None:
        running = LocalConfig.model_validate_json(self._config_file.read_text()) \
            if self._config_file.exists() else LocalConfig()
        asked = {"--s3-port": (self.s3_port, running.s3_port),
                 "--tracking-port": (self.tracking_port, running.tracking_port),
                 "--backend-store-uri": (self.backend_store_uri, running.backend_store_uri)}
        for option, (wanted, actual) in asked.items():
            if wanted is not None and wanted != actual:
                raise LocalStackError(
                    f"the local stack in {self.workdir} is already running with {option} {actual}; "
                    "run `mlops local down` first to change it"
                )

    def _plan(self) -> LocalConfig:
        """Ports and backend for this start: explicit values, else the last ones, else fresh."""
        last = LocalConfig.model_validate_json(self._config_file.read_text()) \
            if self._config_file.exists() else LocalConfig()
        ports: dict[str, int] = {}
        for option, explicit, previous in (
            ("--s3-port", self.s3_port, last.s3_port),
            ("--tracking-port", self.tracking_port, last.tracking_port),
        ):
            if explicit is not None:
                if explicit in ports.values():
                    raise LocalStackError(f"--s3-port and --tracking-port must differ (both {explicit})")
                if not _port_free(explicit):
                    raise LocalStackError(
                        f"port {explicit} on {HOST} ({option}) is already in use by another process; "
                        f"choose another port or omit {option} to pick a free one"
                    )
                ports[option] = explicit
            elif previous is not None and _port_free(previous) and previous not in ports.values():
                ports[option] = previous
            else:
                port = free_port()
                while port in ports.values():
                    port = free_port()
                ports[option] = port
        backend = self.backend_store_uri or last.backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        return LocalConfig(s3_port=ports["--s3-port"], tracking_port=ports["--tracking-port"],
                           backend_store_uri=backend)

    def _spawn(self, name: str, cmd: list[str], port: int, env: dict[str, str]) -> None:
        log = self._log_file(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        self._pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            # Own session and process group: `down` signals exactly this group, and Ctrl-C in
            # the terminal that ran `up` doesn't reach the servers.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=self.workdir, start_new_session=True)
        stat = _proc_stat(proc.pid)
        record = ProcessRecord(pid=proc.pid, start_time=stat["start_time"] if stat else 0, cmdline=cmd, port=port)
        tmp = self._pid_file(name).with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        tmp.replace(self._pid_file(name))
        self._children[name] = proc

    def _wait_healthy(self, name: str, url: str, deadline: float) -> None:
        self.on_status(f"waiting for {name} at {url}")
        while True:
            proc = self._children[name]
            if proc.poll() is not None:
                raise LocalStackError(
                    f"{name} server exited with code {proc.returncode} while starting; "
                    f"last lines of {self._log_file(name)}:\n{_tail(self._log_file(name))}"
                )
            if self._healthy(name, url):
                return
            if time.monotonic() > deadline:
                raise LocalStackError(
                    f"{name} server at {url} not healthy after the timeout; "
                    f"last lines of {self._log_file(name)}:\n{_tail(self._log_file(name))}"
                )
            time.sleep(0.2)

    def _start(self, timeout: float) -> StackOutputs:
        deadline = time.monotonic() + timeout
        plan = self._plan()
        assert plan.s3_port and plan.tracking_port and plan.backend_store_uri
        s3_url = _url(plan.s3_port)
        tracking_url = _url(plan.tracking_port)
        env = _server_env(s3_url)
        _check_database(plan.backend_store_uri)
        self.outputs_file.unlink(missing_ok=True)  # never advertise a stack that isn't up
        try:
            # Both start at once: mlflow takes seconds to import and needs S3 only per request.
            self.on_status(f"starting s3 (moto) on {s3_url}")
            self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(plan.s3_port)],
                        plan.s3_port, env)
            self.on_status(f"starting tracking server (mlflow) on {tracking_url}")
            # The store URI goes by environment (mlflow's own envvar for --backend-store-uri):
            # a password in it must not show in `ps`, the pid file or the log.
            self._spawn("tracking", [
                sys.executable, "-m", "mlflow", "server",
                "--host", HOST, "--port", str(plan.tracking_port), "--workers", "1",
                "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKETS['artifact_bucket']}/mlflow",
            ], plan.tracking_port, {**env, "MLFLOW_BACKEND_STORE_URI": _with_driver(plan.backend_store_uri)})
            self._wait_healthy("s3", s3_url, deadline)
            self._create_buckets(s3_url)
            self._restore(s3_url)
            self._wait_healthy("tracking", tracking_url, deadline)
        except BaseException:
            self._stop_all(snapshot=False)
            raise
        self._config_file.write_text(plan.model_dump_json(indent=2))
        outputs = StackOutputs(
            environment="local",
            tracking_uri=tracking_url,
            tracking_url=tracking_url,
            s3_endpoint=s3_url,
            namespace=None,
            **BUCKETS,
        )
        tmp = self.outputs_file.with_suffix(".tmp")
        tmp.write_text(outputs.model_dump_json(indent=2))
        tmp.replace(self.outputs_file)
        self.on_status(f"local stack up: tracking {tracking_url}, s3 {s3_url}")
        return outputs

    def _create_buckets(self, s3_url: str) -> None:
        s3 = self._s3(s3_url)
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in BUCKETS.values():
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
            # Versioning on, like the provisioned buckets.
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    # down
    def down(self, *, snapshot: bool = True) -> None:
        """Stop exactly the processes we started; S3 is snapshot first. Safe to repeat."""
        if not self.workdir.is_dir():
            return  # nothing was ever started here (and don't create a mistyped workdir)
        with self._locked():
            self._stop_all(snapshot=snapshot)

    def _stop_all(self, *, snapshot: bool) -> None:
        s3 = self._record("s3")
        if snapshot and s3 is not None:
            if self._healthy("s3", _url(s3.port)):
                self.on_status("saving S3 objects to the workdir")
                self._snapshot(_url(s3.port))
            else:
                self.warnings.append(f"S3 server not responding: objects stored since the last `up` are lost "
                                     f"(see {self._log_file('s3')})")
        # Tracking first: it may still be writing artifacts to S3.
        for name in ("tracking", "s3"):
            record = self._record(name)
            if record is not None:
                self.on_status(f"stopping {name} (pid {record.pid})")
                self._stop(record)
            proc = self._children.pop(name, None)
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
            self._pid_file(name).unlink(missing_ok=True)
        self.outputs_file.unlink(missing_ok=True)

    def _stop(self, record: ProcessRecord) -> None:
        leader_ours = _is_ours(record)
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            members = _group_members(record)
            if not members:
                break
            if leader_ours:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.pid, sig)
            else:
                for pid in members:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                _reap(record)
                if not _group_members(record):
                    break
                time.sleep(0.1)
        _reap(record)
        if _group_members(record):
            raise LocalStackError(f"could not stop process group {record.pid} ({' '.join(record.cmdline)})")

    # S3 persistence
    @property
    def _s3_dir(self) -> Path:
        return self.workdir / "s3"

    def _manifest(self) -> dict[str, dict[str, dict[str, Any]]]:
        path = self._s3_dir / "manifest.json"
        return json.loads(path.read_text())["buckets"] if path.exists() else {}

    def _write_manifest(self, buckets: dict[str, dict[str, dict[str, Any]]]) -> None:
        path = self._s3_dir / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "buckets": buckets}, indent=1, sort_keys=True))
        tmp.replace(path)

    def _snapshot(self, s3_url: str) -> None:
        """Copy the current version of every object to s3/objects/<sha256(bucket/key)>.

        File names are hashes so no key (`../x`, `/abs`) can escape the directory; objects
        whose ETag is unchanged since the last snapshot or restore are not downloaded again.
        """
        s3 = self._s3(s3_url)
        objects_dir = self._s3_dir / "objects"
        objects_dir.mkdir(parents=True, exist_ok=True)
        previous = self._manifest()
        current: dict[str, dict[str, dict[str, Any]]] = {}
        todo: list[tuple[str, str, str]] = []
        for bucket in (b["Name"] for b in s3.list_buckets().get("Buckets", [])):
            current[bucket] = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    key, etag = obj["Key"], obj["ETag"]
                    known = previous.get(bucket, {}).get(key)
                    if known and known["etag"] == etag and (objects_dir / known["file"]).exists():
                        current[bucket][key] = known
                    else:
                        todo.append((bucket, key, etag))

        def download(item: tuple[str, str, str]) -> tuple[str, str, dict[str, Any]]:
            bucket, key, etag = item
            name = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()
            response = s3.get_object(Bucket=bucket, Key=key)
            tmp = objects_dir / f"{name}.tmp"
            with open(tmp, "wb") as out:
                shutil.copyfileobj(response["Body"], out, 1 << 20)
            tmp.replace(objects_dir / name)
            entry = {"file": name, "etag": etag, "content_type": response.get("ContentType"),
                     "metadata": response.get("Metadata", {})}
            return bucket, key, entry

        with ThreadPoolExecutor(max_workers=8) as pool:
            for bucket, key, entry in pool.map(download, todo):
                current[bucket][key] = entry
        self._write_manifest(current)
        keep = {e["file"] for objs in current.values() for e in objs.values()}
        for path in objects_dir.iterdir():
            if path.name not in keep:
                path.unlink()

    def _restore(self, s3_url: str) -> None:
        """Upload the last snapshot into the freshly started (empty) S3 server."""
        manifest = self._manifest()
        if not manifest:
            return
        self.on_status(f"restoring {sum(len(o) for o in manifest.values())} S3 objects from the workdir")
        s3 = self._s3(s3_url)
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in manifest:
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
        objects_dir = self._s3_dir / "objects"

        def upload(item: tuple[str, str, dict[str, Any]]) -> tuple[str, str, str]:
            bucket, key, entry = item
            extra = {"Metadata": entry.get("metadata") or {}}
            if entry.get("content_type"):
                extra["ContentType"] = entry["content_type"]
            with open(objects_dir / entry["file"], "rb") as body:
                response = s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
            return bucket, key, response["ETag"]

        items = [(b, k, e) for b, objs in manifest.items() for k, e in objs.items()]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for bucket, key, etag in pool.map(upload, items):
                manifest[bucket][key]["etag"] = etag  # so the next snapshot skips unchanged objects
        self._write_manifest(manifest)
