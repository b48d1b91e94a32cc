"""Drill: tear the local stack down and recreate it from its backup, against the real local Postgres.

1. `test_recreate_keeps_the_champion_and_its_bytes`: a local stack on a fresh Postgres database, a model
   trained to `champion`, then `mlops env recreate local --into <new database> --yes` (in-process CLI):
   back up with the backup CronJob's own containers (pg_dump --format=custom, openssl, upload to the
   artifact bucket), read the backup back, `down` (the S3 snapshot the local stack keeps) and DROP the
   database, restore into a new one with the restore template's containers, `mlflow db upgrade` as the
   tracking server's init container runs it, `up` on it. Then `champion` resolves to the same version,
   its artifacts hash to the same bytes, and the restored model scores a row as before.
2. `test_a_backup_from_an_older_schema_restores_and_upgrades`: a database left by an older MLflow (the
   schema some revisions behind: tests/infra/test_migrations.py's `old_database`) is dumped, encrypted,
   uploaded, fetched, restored and upgraded with the same containers; the tracking store then starts on
   it the way `mlflow server` does (schema verified, no migration of its own) and finds what the old
   schema held. (Test 1 starts a real server on a restored database.)
Each step's seconds are printed (`-s`); the containers equal the rendered ones (tests/infra/test_backup.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from components import backup
from tests.contract.stand_ins import S3Server
from tests.drills.conftest import features, tiny_spec
from tests.infra import test_migrations
from workloads import layout
from workloads.cli import app
from workloads.data.sample import generate
from workloads.devstack import recreate
from workloads.devstack.stack import LocalStack
from workloads.environment import LOCAL_S3_KEY, Environment

pytestmark = pytest.mark.servers
MODEL = "drill-recreate"
# Its `old_database` fixture, here by this name: a database at a schema some revisions behind the head.
old_schema_database = test_migrations.old_database
PG_ADMIN_DSN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def databases() -> Iterator[Callable[[], str]]:
    """Names fresh database URIs on the local Postgres (not created); drops every one afterwards."""
    names: list[str] = []

    def new() -> str:
        names.append(f"mlops_recreate_{uuid.uuid4().hex[:10]}")
        return f"postgresql://postgres@127.0.0.1:5432/{names[-1]}"

    try:
        admin = sqlalchemy.create_engine(PG_ADMIN_DSN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        admin.connect().close()
    except sqlalchemy.exc.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield new
    with admin.connect() as conn:
        for name in names:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def create(uri: str) -> None:
    admin = sqlalchemy.create_engine(PG_ADMIN_DSN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{uri.rsplit("/", 1)[1]}"'))


def exists(uri: str) -> bool:
    admin = sqlalchemy.create_engine(PG_ADMIN_DSN, poolclass=NullPool)
    with admin.connect() as conn:
        return bool(conn.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                 {"n": uri.rsplit("/", 1)[1]}).scalar())


def model_files(env: Environment, name: str, alias: str, into: Path) -> tuple[str, dict[str, str]]:
    """The alias's version and the SHA-256 of every file of its model, as a client downloads them."""
    import mlflow.artifacts

    version = env.mlflow_client().get_model_version_by_alias(name, alias).version
    with env.tracking():
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{alias}", dst_path=str(into)))
    return str(version), {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest()
                          for p in sorted(local.rglob("*")) if p.is_file()}


def predictions(env: Environment, name: str, rows: Any) -> list[float]:
    import mlflow.pyfunc

    with env.tracking():
        return [float(x) for x in mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(rows)]


def test_recreate_keeps_the_champion_and_its_bytes(tmp_path: Path, databases: Callable[[], str]) -> None:
    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    seconds: dict[str, float] = {}
    started = time.monotonic()
    source, target, workdir = databases(), databases(), tmp_path / "stack"
    create(source)
    stack = LocalStack(workdir, backend_store_uri=source)
    try:
        stack.up(timeout=180)
        env = stack.environment()
        seconds["up"] = time.monotonic() - started
        data = generate(600, seed=11)
        result = train(TrainingSpec.parse(tiny_spec(MODEL)), env, data=data, progress=False)
        assert result.decision == "champion"
        seconds["train"] = time.monotonic() - started - sum(seconds.values())
        before = model_files(env, MODEL, "champion", tmp_path / "before")
        scored = predictions(env, MODEL, features(data.head(5)))

        mark = time.monotonic()
        cli = CliRunner().invoke(app, ["env", "recreate", "local", "--workdir", str(workdir), "--into", target,
                                       "--yes", "--json"])
        assert cli.exit_code == 0, cli.output
        seconds["recreate"] = time.monotonic() - mark
        report = json.loads(cli.output)
        assert report["backup_key"].startswith(layout.tracking_backup_prefix())
        assert report["registry"]["models"][MODEL]["aliases"] == {"champion": str(result.version)}
        assert not exists(source), "the teardown drops the old database"

        restored = LocalStack(workdir).environment()
        assert LocalStack(workdir).status()["healthy"]
        after = model_files(restored, MODEL, "champion", tmp_path / "after")
        assert after == before and before[1], "champion must resolve to the same version with the same bytes"
        assert predictions(restored, MODEL, features(data.head(5))) == scored
        stored = restored.s3.get_object(Bucket=restored.outputs.artifact_bucket, Key=report["backup_key"])
        assert stored["Body"].read(8) == b"Salted__"  # encrypted in the bucket
        seconds.update({f"recreate: {k}": v for k, v in report["seconds"].items()})
    finally:
        LocalStack(workdir).down(snapshot=False)
    seconds["total"] = time.monotonic() - started
    print("\nrecreate drill seconds:", {k: round(v, 1) for k, v in seconds.items()})


def with_an_experiment(dsn: str) -> None:
    """One row the old schema holds, to find again after the restore and the upgrade."""
    engine = sqlalchemy.create_engine(dsn, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO experiments (experiment_id, name, artifact_location, "
                                     "lifecycle_stage) VALUES (7, 'from-the-old-schema', 's3://old/7', 'active')"))
    engine.dispose()


def test_a_backup_from_an_older_schema_restores_and_upgrades(tmp_path: Path, databases: Callable[[], str],
                                                            old_schema_database: str) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    started = time.monotonic()
    source, target = old_schema_database.replace("+psycopg2", ""), databases()
    with_an_experiment(old_schema_database)
    seconds: dict[str, float] = {}
    s3 = S3Server()
    try:
        client = s3.client(LOCAL_S3_KEY, LOCAL_S3_KEY)
        client.create_bucket(Bucket="mlops-local-artifacts")
        names = backup.Names("127.0.0.1", "postgres-credentials", backup.BACKUP, "mlops-local-artifacts", s3.url,
                             "minio-credentials")
        containers = recreate.containers(names)
        passphrase = {backup.BACKUP: {"passphrase": "drill-passphrase-0123456789"},
                      "minio-credentials": {"AWS_ACCESS_KEY_ID": LOCAL_S3_KEY, "AWS_SECRET_ACCESS_KEY": LOCAL_S3_KEY}}
        local = {"BACKUP_FILE": str(tmp_path / "tracking.dump"), "RESTORE_SQL": str(tmp_path / "restore.sql"),
                 "HOME": str(tmp_path)}

        def run(name: str, uri: str) -> str:
            db = recreate.Database(uri)
            secrets = {**passphrase, "postgres-credentials": db.credentials(),
                       "mlflow-server": {"backend-store-uri": db.driver_uri()}}
            return recreate.run_container(containers[name], secrets, local)

        mark = time.monotonic()
        for step in ("dump", "upload"):
            run(step, source)
        create(target)
        for step in ("fetch", "restore"):
            run(step, target)
        seconds["backup and restore"] = time.monotonic() - mark
        dsn = recreate.Database(target).driver_uri()
        engine = sqlalchemy.create_engine(dsn, poolclass=NullPool)
        assert _get_schema_version(engine) != _get_latest_schema_revision()  # restored as it was: old
        mark = time.monotonic()
        print(run("migrate", target).strip().splitlines()[-1])
        seconds["migrate"] = time.monotonic() - mark
        assert _get_schema_version(engine) == _get_latest_schema_revision()
        engine.dispose()
        store = SqlAlchemyStore(dsn, str(tmp_path / "artifacts"))  # raises on an out-of-date schema
        experiment = store.get_experiment_by_name("from-the-old-schema")
        assert experiment is not None and experiment.experiment_id == "7"
        store.engine.dispose()
    finally:
        s3.stop()
    seconds["total"] = time.monotonic() - started
    print("\nold-schema restore drill seconds:", {k: round(v, 1) for k, v in seconds.items()})
