"""The tracking server's schema migration, run exactly as rendered against a real Postgres.

Without it, MLflow 3.17's server meets an old schema in one of two ways: it refuses to start
("out-of-date database schema") when the newer migrations only change columns, or, when one adds a
table (as the installed MLflow's newest does), it runs every migration itself at start, on each
replica at once and without a lock. The init container migrates first, under an advisory lock, so
the server only ever verifies a current schema.

Each test creates its own database in the local Postgres (127.0.0.1:5432), initialises it at an
older MLflow schema revision (the initial tables, then alembic up to a revision a few steps before
the installed MLflow's head), and drops it afterwards. The init container's command and env come
from the rendered dev stack; only the DSN (a Secret in the cluster) points at the test database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic import command
from alembic.script import ScriptDirectory
from mlflow.store.db.utils import (
    _all_tables_exist,
    _get_alembic_config,
    _get_latest_schema_revision,
    _get_schema_version,
)
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
from sqlalchemy.pool import NullPool

from components.migrations import CONTAINER, LOCK_KEY
from components.render import RenderResult
from tests.infra.helpers import manifest, pod_spec

ADMIN_DSN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
STEPS_BEHIND = 5
VENV_BIN = str(Path(sys.executable).parent)


def _postgres_up() -> bool:
    try:
        with sqlalchemy.create_engine(ADMIN_DSN, poolclass=NullPool).connect():
            return True
    except sqlalchemy.exc.OperationalError:
        return False


pytestmark = pytest.mark.skipif(not _postgres_up(), reason="no Postgres on 127.0.0.1:5432")


def older_revision(steps: int) -> str:
    script = ScriptDirectory.from_config(_get_alembic_config(""))
    revision = script.get_revision(_get_latest_schema_revision())
    for _ in range(steps):
        revision = script.get_revision(revision.down_revision)
    return str(revision.revision)


@pytest.fixture
def old_database() -> Iterator[str]:
    """A database at a schema STEPS_BEHIND revisions old, as an older MLflow image left it."""
    name = f"mlops_migrate_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(ADMIN_DSN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    dsn = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    try:
        engine = sqlalchemy.create_engine(dsn, poolclass=NullPool)
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(dsn)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, older_revision(STEPS_BEHIND))
        engine.dispose()
        yield dsn
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def init_container(result: RenderResult) -> dict[str, Any]:
    spec = pod_spec(manifest(result, "Deployment", "mlflow"))
    (container,) = [c for c in spec["initContainers"] if c["name"] == CONTAINER]
    return container


def rendered_process(container: dict[str, Any], dsn: str) -> subprocess.Popen[str]:
    """Start the init container's command with its rendered env (the Secret's DSN -> the test database)."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"]["secretKeyRef"]["key"] == "backend-store-uri", var
            env[var["name"]] = dsn
    env["HOME"] = os.environ.get("TMPDIR", "/tmp")  # the rendered HOME is the pod's /tmp emptyDir
    return subprocess.Popen(container["command"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def schema_version(dsn: str) -> str:
    engine = sqlalchemy.create_engine(dsn, poolclass=NullPool)
    try:
        return str(_get_schema_version(engine))
    finally:
        engine.dispose()


def all_tables(dsn: str) -> bool:
    """False: the server would run the migrations itself at start (unlocked, on every replica)."""
    engine = sqlalchemy.create_engine(dsn, poolclass=NullPool)
    try:
        return bool(_all_tables_exist(engine))
    finally:
        engine.dispose()


def server_store_starts(dsn: str) -> None:
    """What `mlflow server` does with its backend store at start: verify the schema (raises if old)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(dsn, "/tmp/mlflow-artifacts").engine.dispose()


def test_old_schema_is_migrated_by_the_rendered_init_container(
        rendered: dict[str, RenderResult], old_database: str) -> None:
    assert schema_version(old_database) == older_revision(STEPS_BEHIND)
    assert not all_tables(old_database)  # as the server would find it: it would migrate, unlocked
    process = rendered_process(init_container(rendered["dev"]), old_database)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, output
    assert schema_version(old_database) == _get_latest_schema_revision() and all_tables(old_database)
    server_store_starts(old_database)  # the server takes its verify-only path, and it passes
    engine = sqlalchemy.create_engine(old_database, poolclass=NullPool)
    with engine.connect() as conn:  # the basic-auth tables too, at their head
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version_auth")).scalar() == 1
    engine.dispose()


def test_two_replicas_wait_for_each_other(rendered: dict[str, RenderResult], old_database: str) -> None:
    """While one holds the advisory lock the other waits; then both succeed on a current schema."""
    engine = sqlalchemy.create_engine(old_database, poolclass=NullPool)  # advisory locks are per database
    container = init_container(rendered["prod"])  # prod runs 3 replicas
    with engine.connect() as holder:
        holder.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({LOCK_KEY})"))
        holder.commit()
        first, second = rendered_process(container, old_database), rendered_process(container, old_database)
        for process in (first, second):  # both ready to migrate: only the lock stands between them and it
            assert process.stdout is not None
            lines = iter(process.stdout.readline, "")
            assert any("waiting for the migration lock" in line for line in lines)
        time.sleep(5)
        assert first.poll() is None and second.poll() is None, "a migration ran without the lock"
        assert schema_version(old_database) == older_revision(STEPS_BEHIND)
        holder.execute(sqlalchemy.text(f"SELECT pg_advisory_unlock({LOCK_KEY})"))
        holder.commit()
    engine.dispose()
    outputs = [p.communicate(timeout=180)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert schema_version(old_database) == _get_latest_schema_revision()


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci", "local"])
def test_every_tracking_server_migrates_first_and_runs_no_job_runner(
        rendered: dict[str, RenderResult], stack: str) -> None:
    spec = pod_spec(manifest(rendered[stack], "Deployment", "mlflow"))
    server = next(c for c in spec["containers"] if c["name"] == "mlflow")  # beside it: the metrics sidecar
    container = init_container(rendered[stack])
    assert container["image"] == server["image"]
    server_dsn = next(v["valueFrom"] for v in server["env"] if v["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert next(v["valueFrom"] for v in container["env"] if v["name"] == "MLFLOW_BACKEND_STORE_URI") == server_dsn
    assert {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"} in server["env"]


def test_waits_for_a_database_that_is_still_starting(rendered: dict[str, RenderResult]) -> None:
    """An in-cluster Postgres may come up after the tracking pod: the init container retries, then migrates."""
    name = f"mlops_late_{uuid.uuid4().hex[:10]}"
    dsn = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    admin = sqlalchemy.create_engine(ADMIN_DSN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    process = rendered_process(init_container(rendered["ci"]), dsn)  # ci keeps Postgres in the cluster
    try:
        assert process.stdout is not None
        assert any("database not reachable yet" in line for line in iter(process.stdout.readline, ""))
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))  # the database comes up, empty
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, output
        assert schema_version(dsn) == _get_latest_schema_revision() and all_tables(dsn)
    finally:
        process.kill()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
