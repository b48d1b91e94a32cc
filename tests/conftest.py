"""Shared fixtures for the whole suite: one local stack per session, throwaway Postgres databases."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import workloads  # noqa: F401 - sets MLFLOW_DISABLE_TELEMETRY / DO_NOT_TRACK before mlflow is imported
from workloads.devstack.stack import LocalStack
from workloads.environment import Environment, StackOutputs

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _isolated_environment() -> Iterator[None]:
    """Undo what a test's workload calls leave behind: `apply_env()` and `mlflow.set_tracking_uri`.

    Workloads point the process at their stack (that is their job); a test that runs one against
    its own short-lived stack must not leave the next test talking to a server that is gone.
    """
    saved_env = dict(os.environ)
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    saved_uri = tracking._tracking_uri if tracking else None
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if tracking is not None:
        tracking._tracking_uri = saved_uri  # private, but the only way to unset a set_tracking_uri


@pytest.fixture(scope="session")
def _local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("local-stack"))
    saved_env = dict(os.environ)
    try:
        stack.up(timeout=180)
        yield stack
    finally:
        # A throwaway workdir: no S3 snapshot needed.
        stack.down(snapshot=False)
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.fixture(scope="session")
def local_stack(_local_stack: LocalStack) -> StackOutputs:
    """The session's local stack (moto S3 + mlflow server on 127.0.0.1): its outputs, nothing applied."""
    return _local_stack.environment().outputs


@pytest.fixture(scope="session")
def local_env(_local_stack: LocalStack) -> Environment:
    """The session's local stack as an `Environment` (its workdir is the stack's workdir)."""
    return _local_stack.environment()


@pytest.fixture(scope="session")
def local_workdir(_local_stack: LocalStack) -> Path:
    """The workdir of the session's local stack (holds outputs.json; pass it as --workdir)."""
    return _local_stack.workdir


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty Postgres database on 127.0.0.1:5432; yields its URI, drops it afterwards."""
    import psycopg2

    name = f"mlops_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 (user postgres): {exc}")
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            # Servers under test may still hold connections: end them, then drop.
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
