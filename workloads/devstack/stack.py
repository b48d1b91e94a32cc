"""The local stack: moto's S3 server and a real MLflow tracking server on 127.0.0.1.

Same code paths as a provisioned environment (the S3 API, the tracking server over HTTP),
no cloud. Everything lives under one workdir (default `.mlops/local`):

    outputs.json        the stack outputs contract (read by `workloads.environment.resolve`)
    local.json          how the stack was started (ports, backend store), reused by the next `up`
    mlflow.db           the tracking server's SQLite store (unless a postgresql:// URI is given)
    s3/                 the S3 snapshot: manifest.json + objects/<sha256> (devstack/snapshot.py)
    logs/<name>.log     each server's stdout and stderr
    pids/<name>.pid     pid, process start time and command line of each server we started

S3 persists through the snapshot: `down` saves it, `up` restores it. A crash without `down`
loses the S3 changes since the last `up` (the MLflow database does not).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workloads.devstack import servers
from workloads.devstack.processes import HOST, LocalStackError, Processes, free_port, port_free, url
from workloads.devstack.servers import COMPONENTS, local_outputs
from workloads.devstack.snapshot import Snapshot
from workloads.environment import OUTPUTS_FILE, Environment, StackOutputs, from_file, workdir_from

__all__ = ["LocalConfig", "LocalStack", "LocalStackError"]


class LocalConfig(BaseModel):
    """How the stack was last started; `up` reuses it so URLs stay stable across restarts."""

    s3_port: int | None = None
    tracking_port: int | None = None
    backend_store_uri: str | None = None


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
        self.processes = Processes(self.workdir)

    @classmethod
    def at(cls, workdir: Path | str | None, **kwargs: Any) -> LocalStack:
        """The stack in `workdir`, else $MLOPS_WORKDIR, else `.mlops/local` (as the CLI resolves it)."""
        return cls(workdir_from(workdir), **kwargs)

    @property
    def outputs_file(self) -> Path:
        return self.workdir / OUTPUTS_FILE

    @property
    def _config_file(self) -> Path:
        return self.workdir / "local.json"

    def environment(self) -> Environment:
        """The running stack as an `Environment` (from outputs.json, written once `up` finished)."""
        return Environment(from_file(self.outputs_file), self.workdir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _last_config(self) -> LocalConfig:
        if not self._config_file.exists():
            return LocalConfig()
        return LocalConfig.model_validate_json(self._config_file.read_text())

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per component: pid, URL, running, healthy; plus overall `running` and `healthy`."""
        components: dict[str, dict[str, Any]] = {}
        for name in COMPONENTS:
            record = self.processes.record(name)
            address = url(record.port) if record else None
            components[name] = {
                "pid": record.pid if record else None,
                "url": address,
                "running": record is not None,
                "healthy": bool(address and servers.healthy(name, address)),
                "log": str(self.processes.log_file(name)),
            }
        return {
            "workdir": str(self.workdir),
            "running": any(c["running"] for c in components.values()),
            "healthy": all(c["healthy"] for c in components.values()),
            "components": components,
        }

    # --- up -----------------------------------------------------------------------------------

    def up(self, timeout: float = 120) -> StackOutputs:
        """Start both servers (unless already up), wait until healthy, write outputs.json."""
        with self._locked():
            state = self.status()
            if state["healthy"] and self.outputs_file.exists():
                self._check_matches_running()
                self.was_running = True
                self.on_status(f"local stack already running in {self.workdir}")
                return from_file(self.outputs_file)
            if state["running"]:
                # Half up (one server died, or a crash): start clean rather than guess.
                self.on_status("local stack partly running: stopping it first")
                self._stop_all(snapshot=True)
            return self._start(timeout)

    def _check_matches_running(self) -> None:
        running = self._last_config()
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
        last = self._last_config()
        ports: dict[str, int] = {}
        for option, explicit, previous in (
            ("--s3-port", self.s3_port, last.s3_port),
            ("--tracking-port", self.tracking_port, last.tracking_port),
        ):
            if explicit is not None:
                if explicit in ports.values():
                    raise LocalStackError(f"--s3-port and --tracking-port must differ (both {explicit})")
                if not port_free(explicit):
                    raise LocalStackError(
                        f"port {explicit} on {HOST} ({option}) is already in use by another process; "
                        f"choose another port or omit {option} to pick a free one"
                    )
                ports[option] = explicit
            elif previous is not None and port_free(previous) and previous not in ports.values():
                ports[option] = previous
            else:
                port = free_port()
                while port in ports.values():
                    port = free_port()
                ports[option] = port
        backend = self.backend_store_uri or last.backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        return LocalConfig(s3_port=ports["--s3-port"], tracking_port=ports["--tracking-port"],
                           backend_store_uri=backend)

    def _start(self, timeout: float) -> StackOutputs:
        deadline = time.monotonic() + timeout
        plan = self._plan()
        assert plan.s3_port and plan.tracking_port and plan.backend_store_uri
        outputs = local_outputs(plan.s3_port, plan.tracking_port)
        assert outputs.s3_endpoint
        servers.check_database(plan.backend_store_uri)
        self.outputs_file.unlink(missing_ok=True)  # never advertise a stack that isn't up
        try:
            self._spawn_and_fill(plan, Environment(outputs, self.workdir), deadline)
        except BaseException:
            self._stop_all(snapshot=False)
            raise
        self._config_file.write_text(plan.model_dump_json(indent=2))
        tmp = self.outputs_file.with_suffix(".tmp")
        tmp.write_text(outputs.model_dump_json(indent=2))
        tmp.replace(self.outputs_file)
        self.on_status(f"local stack up: tracking {outputs.tracking_uri}, s3 {outputs.s3_endpoint}")
        return outputs

    def _spawn_and_fill(self, plan: LocalConfig, env: Environment, deadline: float) -> None:
        """Both servers at once (mlflow takes seconds to import, needs S3 only per request), then S3's data."""
        assert plan.s3_port and plan.tracking_port and plan.backend_store_uri and env.outputs.s3_endpoint
        s3_url, tracking_url = env.outputs.s3_endpoint, env.tracking_uri
        server_env = servers.server_env(s3_url)
        self.on_status(f"starting s3 (moto) on {s3_url}")
        self.processes.spawn("s3", servers.s3_command(plan.s3_port), plan.s3_port, server_env)
        self.on_status(f"starting tracking server (mlflow) on {tracking_url}")
        self.processes.spawn("tracking", servers.tracking_command(plan.tracking_port), plan.tracking_port,
                             servers.tracking_env(server_env, plan.backend_store_uri))
        self._wait("s3", s3_url, deadline)
        servers.create_buckets(env.s3)
        self._snapshot(env).restore(lambda bucket: servers.create_bucket(env.s3, bucket), self.on_status)
        self._wait("tracking", tracking_url, deadline)

    def _wait(self, name: str, address: str, deadline: float) -> None:
        self.on_status(f"waiting for {name} at {address}")
        self.processes.wait_healthy(name, address, lambda: servers.healthy(name, address), deadline)

    def _snapshot(self, env: Environment) -> Snapshot:
        return Snapshot(self.workdir / "s3", env.s3)

    # --- down ---------------------------------------------------------------------------------

    def down(self, *, snapshot: bool = True) -> None:
        """Stop exactly the processes we started; S3 is saved first. Safe to repeat."""
        if not self.workdir.is_dir():
            return  # nothing was ever started here (and don't create a mistyped workdir)
        with self._locked():
            self._stop_all(snapshot=snapshot)

    def _stop_all(self, *, snapshot: bool) -> None:
        if snapshot:
            self._save_s3()
        # Tracking first: it may still be writing artifacts to S3.
        for name in ("tracking", "s3"):
            self.processes.stop(name, self.on_status)
        self.outputs_file.unlink(missing_ok=True)

    def _save_s3(self) -> None:
        record = self.processes.record("s3")
        if record is None:
            return
        if not self.outputs_file.exists() or from_file(self.outputs_file).s3_endpoint != url(record.port):
            # `up` never finished (its restore may be partial): saving would drop objects from the snapshot.
            self.warnings.append("the local stack never finished starting: S3 not saved, the last snapshot is kept")
        elif not servers.healthy("s3", url(record.port)):
            self.warnings.append(f"S3 server not responding: objects stored since the last `up` are lost "
                                 f"(see {self.processes.log_file('s3')})")
        else:
            self.on_status("saving S3 objects to the workdir")
            self._snapshot(self.environment()).save()
