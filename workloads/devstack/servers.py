"""The two servers of the local stack: how each is started, checked and what it is given.

moto's S3 server and MLflow's tracking server (artifacts proxied to S3), both on 127.0.0.1,
with a scrubbed environment: no telemetry, and a fake identity for the fake S3 (real AWS
credentials from the user's shell never reach them).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import httpx

from workloads.devstack.processes import HOST, LocalStackError, url
from workloads.environment import LOCAL_S3_KEY, StackOutputs

BUCKETS = {
    "data_bucket": "mlops-local-data",
    "artifact_bucket": "mlops-local-artifacts",
    "capture_bucket": "mlops-local-capture",
}
COMPONENTS = ("s3", "tracking")
S3_REGION = "us-east-1"


def local_outputs(s3_port: int, tracking_port: int) -> StackOutputs:
    """The outputs contract of a local stack on these ports."""
    tracking = url(tracking_port)
    return StackOutputs(environment="local", tracking_uri=tracking, tracking_url=tracking,
                        s3_endpoint=url(s3_port), namespace=None, **BUCKETS)


def server_env(s3_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        # The huey job runner (GenAI evaluation jobs) is two more processes we don't use.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_S3_ENDPOINT_URL=s3_url,
        # Never hand real AWS credentials to a local fake.
        AWS_ACCESS_KEY_ID=LOCAL_S3_KEY,
        AWS_SECRET_ACCESS_KEY=LOCAL_S3_KEY,
        AWS_DEFAULT_REGION=S3_REGION,
    )
    return env


def s3_command(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


def tracking_command(port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKETS['artifact_bucket']}/mlflow"]


def tracking_env(env: dict[str, str], backend_store_uri: str) -> dict[str, str]:
    # The store URI goes by environment (mlflow's own envvar for --backend-store-uri):
    # a password in it must not show in `ps`, the pid file or the log.
    return {**env, "MLFLOW_BACKEND_STORE_URI": _with_driver(backend_store_uri)}


def _with_driver(uri: str) -> str:
    """`postgresql://` with the psycopg2 driver we depend on: SQLAlchemy 2.1 defaults to psycopg 3."""
    for scheme in ("postgresql://", "postgres://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg2://" + uri[len(scheme):]
    return uri


def check_database(uri: str) -> None:
    """Fail in seconds on a wrong Postgres URI: mlflow itself retries with backoff for minutes."""
    if not uri.startswith(("postgresql", "postgres:")):
        return
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(uri)
    try:
        psycopg2.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False),
                         connect_timeout=5).close()
    except psycopg2.Error as exc:
        raise LocalStackError(
            f"cannot connect to the backend store {parsed.render_as_string(hide_password=True)}: "
            f"{str(exc).strip()}"
        ) from None


def healthy(name: str, address: str) -> bool:
    """One HTTP request: mlflow's /health, or moto's ListBuckets (unsigned requests go to S3)."""
    try:
        if name == "tracking":
            return httpx.get(f"{address}/health", timeout=2).status_code == 200
        response = httpx.get(f"{address}/", timeout=2)
        return response.status_code == 200 and "ListAllMyBucketsResult" in response.text
    except httpx.HTTPError:
        return False


def create_bucket(s3: Any, bucket: str) -> None:
    """A bucket in the client's region (S3 refuses a create outside us-east-1 without its region)."""
    region = s3.meta.region_name
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **location)


def create_buckets(s3: Any) -> None:
    """The stack's buckets, versioned like the provisioned ones."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS.values():
        if bucket not in existing:
            create_bucket(s3, bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
