"""Schema migrations for the tracking server's Postgres, run before the server starts.

A new MLflow image may need a newer schema; the server itself only verifies it and refuses to
start ("Detected out-of-date database schema"). So the tracking Deployment runs this init
container first, with the server's image and its backend-store DSN:

1. wait for the database (up to three minutes: an in-cluster Postgres may start after this pod), then
   take a Postgres session advisory lock (`pg_advisory_lock`), so that two replicas starting
   together (a rollout of 3, or maxSurge) migrate one after the other; the second finds the schema
   current and does nothing. The lock belongs to the connection: a killed pod releases it.
2. `mlflow db upgrade <dsn>` (in-process, so the DSN never appears in a process listing): creates the
   tables of an empty database, or upgrades an existing one to the image's head revision;
3. the basic-auth tables (same database, their own alembic history), as the server would at start.

The script is plain text in the rendered manifest; tests/infra/test_migrations.py runs exactly the
rendered command against a real Postgres created at an older schema revision.
"""

from __future__ import annotations

from typing import Any

from components.security import container_security_context, resources

# "mlflow" in ASCII: one fixed 64-bit key for every tracking server, in its own database.
LOCK_KEY = 0x6D6C666C6F77
CONTAINER = "migrate-schema"
CONNECT_ATTEMPTS = 90  # 2 s apart: three minutes for a database that is still starting

SCRIPT = f"""\
import os, sys, time
import sqlalchemy
from sqlalchemy.pool import NullPool
uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
from mlflow.db import upgrade
from mlflow.server.auth.db.utils import migrate_if_needed
from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version
engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
for attempt in range({CONNECT_ATTEMPTS}):  # an in-cluster Postgres may still be starting
    try:
        connection = engine.connect()
        break
    except sqlalchemy.exc.OperationalError as error:
        if attempt == {CONNECT_ATTEMPTS} - 1:
            raise
        print(f"database not reachable yet ({{type(error).__name__}}); retrying", flush=True)
        time.sleep(2)
with connection as lock:
    print("waiting for the migration lock", flush=True)
    lock.execute(sqlalchemy.text("SELECT pg_advisory_lock({LOCK_KEY})"))
    lock.commit()
    try:
        upgrade.main([uri], standalone_mode=False)
        migrate_if_needed(engine, "head")
        current = _get_schema_version(engine)
        print(f"tracking schema at {{current}} (image head {{_get_latest_schema_revision()}})", flush=True)
        sys.exit(0 if current == _get_latest_schema_revision() else 1)
    finally:
        lock.execute(sqlalchemy.text("SELECT pg_advisory_unlock({LOCK_KEY})"))
        lock.commit()
"""


def migration_container(image: str, backend_secret: Any, telemetry_off: list[dict[str, Any]]) -> dict[str, Any]:
    """The init container: the server's image and DSN, the script above, nothing else."""
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", SCRIPT],
        "env": [
            *telemetry_off,
            {"name": "MLFLOW_BACKEND_STORE_URI",
             "valueFrom": {"secretKeyRef": {"name": backend_secret, "key": "backend-store-uri"}}},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": resources("250m", "512Mi"),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }

