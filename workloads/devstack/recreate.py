"""Tear the local stack down and recreate it from a backup: registry, experiments, runs and artifacts intact.

    mlops env recreate local [--workdir W] [--into postgresql://...] --yes

Each database step runs the container the cluster runs (components/backup.py, components/migrations.py)
as a local process: its rendered command and environment, with the cluster's names (hosts, Secrets,
the /backup emptyDir) replaced by the local stack's, the only change:
1. back up: `dump` (pg_dump --format=custom) then `upload` (openssl AES-256 under the passphrase, to
   s3://<artifact bucket>/backups/tracking/<stamp>.dump.enc);
2. read it back: `fetch` downloads the newest dump, checks its SHA-256 and decrypts it; a backup that
   cannot be read stops here, before anything is removed;
3. tear down: `mlops local down` (S3 is saved to the workdir, the backup object with it), DROP DATABASE;
4. recreate: CREATE DATABASE (`--into`, default the same URI), `restore`, then the tracking server's
   init container (`mlflow db upgrade` under its advisory lock: a dump from an older MLflow is upgraded);
5. `mlops local up` on it; the registry (every model's versions and aliases) and the experiments must
   be what they were, and the backup object must be back in the bucket.
The passphrase comes from --passphrase-file, else `<workdir>/backup.key` (created once, mode 600).
Postgres backends only: a SQLite store is already a file in the workdir.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import backup, migrations
from components.security import TELEMETRY_OFF
from workloads.devstack.stack import LocalConfig, LocalStack
from workloads.environment import LOCAL_S3_KEY, Environment
from workloads.errors import MlopsError, UsageError

KEY_FILE = "backup.key"
# The cluster's Secret names, as the containers refer to them; here they hold the local stack's values.
POSTGRES_SECRET, S3_SECRET, SERVER_SECRET = "postgres-credentials", "minio-credentials", "mlflow-server"
RETENTION_DAYS = 14  # tracking.database.backup.retentionDays' default
STEP_TIMEOUT = 600.0


class RecreateError(MlopsError):
    """A step of the recreation failed; the message says where the backup is."""

    kind = "recreate failed"


@dataclass
class Recreation:
    backup_key: str
    source: str  # database URIs, passwords hidden
    target: str
    registry: dict[str, Any]  # what was checked equal before and after
    seconds: dict[str, float] = field(default_factory=dict)


def passphrase(workdir: Path, passphrase_file: Path | None) -> str:
    """The given file's first line, else the workdir's key (created on first use, readable by its owner only)."""
    path = passphrase_file or workdir / KEY_FILE
    if passphrase_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"passphrase file {path}: {exc.strerror}") from None
    if len(text) < 16:
        raise UsageError(f"passphrase file {path}: the passphrase must have at least 16 characters")
    return text


# --- running a rendered container as a local process ----------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def run_container(container: dict[str, Any], secrets_: dict[str, dict[str, str]], local: dict[str, str],
                  timeout: float = STEP_TIMEOUT) -> str:
    """The container's command with its env (values, Secret references), then `local` over the cluster's values."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for source in container.get("envFrom", []):
        env.update(secrets_[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets_[ref["name"]][ref["key"]]
    env.update(local)
    argv = [expand(a, env) for a in [*container["command"], *container.get("args", [])]]
    if argv[0] == "python":  # the image's interpreter: this one, with the same packages
        argv[0] = sys.executable
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RecreateError(f"{container['name']}: no result in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RecreateError(f"{container['name']}: exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def containers(names: backup.Names, retention_days: int = RETENTION_DAYS) -> dict[str, dict[str, Any]]:
    """The backup, fetch and restore containers and the tracking migration, built as the stack renders them."""
    image = "local"  # not used: the local processes are this machine's pg_dump, psql, openssl and python
    return {"dump": backup.dump_container(image, names),
            "upload": backup.upload_container(image, names, retention_days),
            "fetch": backup.fetch_container(image, names),
            "restore": backup.restore_container(image, names),
            "migrate": migrations.migration_container(image, SERVER_SECRET, TELEMETRY_OFF)}


# --- the local stack's Postgres ------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    uri: str  # as the local stack was given it

    @property
    def url(self) -> Any:
        from sqlalchemy.engine import make_url

        return make_url(self.uri)

    def shown(self) -> str:
        return str(self.url.render_as_string(hide_password=True))

    def driver_uri(self) -> str:
        """With the psycopg2 driver, as the tracking server's Secret holds it."""
        return str(self.url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False))

    def credentials(self) -> dict[str, str]:
        """The Postgres Secret's keys with this database's values."""
        url = self.url
        return {"POSTGRES_USER": url.username or "postgres", "POSTGRES_PASSWORD": url.password or "",
                "POSTGRES_DB": url.database or ""}

    def _admin(self, sql: str, *params: str) -> None:
        import psycopg2

        url = self.url.set(drivername="postgresql", database="postgres")
        try:
            conn = psycopg2.connect(url.render_as_string(hide_password=False), connect_timeout=10)
        except psycopg2.Error as exc:
            raise RecreateError(f"cannot connect to {url.render_as_string(hide_password=True)}: {exc}") from None
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
        except psycopg2.Error as exc:
            raise RecreateError(f"{self.shown()}: {str(exc).strip()}") from None
        finally:
            conn.close()

    def drop(self) -> None:
        name = self.url.database
        self._admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", name)
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.url.database}"')


# --- the recreation -----------------------------------------------------------------------------------


class LocalRecreation:
    """One recreation of the local stack in `stack.workdir` (see the module docstring for the steps)."""

    def __init__(self, stack: LocalStack, key: str, into: str | None = None,
                 on_status: Callable[[str], None] | None = None) -> None:
        self.stack, self.key = stack, key
        self.on_status = on_status or (lambda _msg: None)
        config_file = stack.workdir / "local.json"
        if not config_file.exists():
            raise UsageError(f"no local stack in {stack.workdir}: start one with "
                             "`mlops local up --backend-store-uri postgresql://...`")
        uri = LocalConfig.model_validate_json(config_file.read_text()).backend_store_uri
        if not uri or not uri.startswith(("postgresql", "postgres:")):
            raise UsageError(f"the local stack in {stack.workdir} does not run on Postgres (backend {uri!r}); "
                             "recreation backs up with pg_dump: start it with --backend-store-uri postgresql://...")
        self.source, self.target = Database(uri), Database(into or uri)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def _step(self, name: str, message: str) -> Iterator[None]:
        self.on_status(message)
        started = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - started, 2)

    def _names_and_secrets(self, env: Environment, db: Database) -> tuple[backup.Names, dict[str, dict[str, str]]]:
        assert env.outputs.s3_endpoint
        names = backup.Names(db.url.host or "127.0.0.1", POSTGRES_SECRET, backup.BACKUP, env.outputs.artifact_bucket,
                             env.outputs.s3_endpoint, S3_SECRET)
        return names, {
            POSTGRES_SECRET: db.credentials(),
            backup.BACKUP: {backup.PASSPHRASE_SECRET_KEY: self.key},
            S3_SECRET: {"AWS_ACCESS_KEY_ID": LOCAL_S3_KEY, "AWS_SECRET_ACCESS_KEY": LOCAL_S3_KEY},
            SERVER_SECRET: {"backend-store-uri": db.driver_uri()},
        }

    def _local(self, scratch: Path, db: Database) -> dict[str, str]:
        """What differs from the cluster: the emptyDirs are directories here, Postgres may be on another port."""
        return {"BACKUP_FILE": str(scratch / "tracking.dump"), "RESTORE_SQL": str(scratch / "restore.sql"),
                "HOME": str(scratch), "PGPORT": str(db.url.port or 5432)}

    def _run(self, name: str, env: Environment, db: Database, scratch: Path) -> str:
        names, secrets_ = self._names_and_secrets(env, db)
        return run_container(containers(names)[name], secrets_, self._local(scratch, db))

    def run(self) -> Recreation:
        if not self.stack.status()["healthy"]:
            raise UsageError(f"the local stack in {self.stack.workdir} is not up and healthy; "
                             "run `mlops local up` first")
        env = self.stack.environment()
        scratch = Path(tempfile.mkdtemp(prefix="recreate-", dir=self.stack.workdir))
        with self._step("backup", "backing up the tracking database (pg_dump, openssl, upload)"):
            self._run("dump", env, self.source, scratch)
            uploaded = re.search(r"uploaded s3://[^/\s]+/(\S+)", self._run("upload", env, self.source, scratch))
            if uploaded is None:
                raise RecreateError("upload: no `uploaded s3://...` line: the backup's key is unknown")
            key = uploaded.group(1)
        with self._step("verify", "reading the backup back from the bucket (SHA-256, decrypt)"):
            self._run("fetch", env, self.source, scratch)
            registry = registry_state(env)
        with self._step("teardown", "tearing down: local stack down, database dropped"):
            self.stack.down()
            self.source.drop()
        try:
            self._recreate(env, scratch, key, registry)
        except MlopsError as exc:
            raise RecreateError(f"{exc} (the decrypted dump is in {scratch}; the backup is "
                                f"s3://{env.outputs.artifact_bucket}/{key} in the workdir's S3 snapshot)") from None
        shutil.rmtree(scratch, ignore_errors=True)
        return Recreation(key, self.source.shown(), self.target.shown(), registry, dict(self.seconds))

    def _recreate(self, env: Environment, scratch: Path, key: str, registry: dict[str, Any]) -> None:
        with self._step("restore", f"restoring into {self.target.shown()} and migrating the schema"):
            self.target.create()
            self._run("restore", env, self.target, scratch)
            self._run("migrate", env, self.target, scratch)
        with self._step("up", "starting the local stack on the restored database"):
            up = LocalStack(self.stack.workdir, backend_store_uri=self.target.uri, on_status=self.on_status)
            up.up()
            restored = up.environment()
        with self._step("check", "comparing the registry and experiments with the backup"):
            after = registry_state(restored)
            if after != registry:
                raise RecreateError(f"the recreated registry differs: before {registry}, after {after}")
            restored.s3.head_object(Bucket=restored.outputs.artifact_bucket, Key=key)


def registry_state(env: Environment) -> dict[str, Any]:
    """Every registered model's versions and aliases, and the experiments: what a recreation must keep."""
    from mlflow.entities import ViewType

    client = env.mlflow_client()
    models = {}
    for model in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name='{model.name}'", max_results=10000)
        models[model.name] = {"aliases": dict(model.aliases),
                              "versions": sorted(int(v.version) for v in versions)}
    experiments = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL, max_results=10000))
    return {"models": models, "experiments": experiments}
