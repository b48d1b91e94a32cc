"""Where a workload runs: the stack outputs contract as one typed object, and the `Environment`.

`StackOutputs` is the contract (plain values). `Environment` is what workloads are handed,
explicitly: the outputs, an S3 client for the environment's buckets, the tracking URI and a
writable state directory. Nothing here writes `os.environ`: MLflow's fluent API is pointed at
the environment only inside `Environment.tracking()`, and restored afterwards.

Sources, first match wins:
1. `--stack NAME`: `pulumi stack output --json --show-secrets -s NAME` (needs the Pulumi CLI);
2. the local stack's outputs file (`<workdir>/outputs.json`, written by `mlops local up`);
3. environment variables `MLOPS_<NAME>` (what Jobs, CronJobs and serving pods get) plus
   the standard `MLFLOW_TRACKING_URI` / `MLFLOW_S3_ENDPOINT_URL`.

Names match the Pulumi stack outputs in README ("Stack outputs contract").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from workloads.errors import EnvironmentNotFound

DEFAULT_WORKDIR = Path(".mlops/local")
OUTPUTS_FILE = "outputs.json"
LOCAL_S3_KEY = "mlops-local"  # a local S3-compatible store takes any key

StackError = EnvironmentNotFound  # the name the rest of the code base knows


class StackOutputs(BaseModel):
    """The subset of the outputs contract that workloads use."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    environment: str
    tracking_uri: str
    data_bucket: str
    artifact_bucket: str
    capture_bucket: str
    s3_endpoint: str | None = None
    namespace: str | None = None
    kms_key_arn: str | None = None
    tracking_url: str | None = None
    serving_endpoints: dict[str, str] = {}

    # TRANSITIONAL (removed once every stage takes an Environment): the old global wiring.
    def apply_env(self) -> None:
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        if self.s3_endpoint:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint
            if _is_loopback(self.s3_endpoint):
                os.environ.setdefault("AWS_ACCESS_KEY_ID", LOCAL_S3_KEY)
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", LOCAL_S3_KEY)
        os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))

    def s3_client(self) -> Any:  # TRANSITIONAL, see apply_env
        return Environment(self).s3


@dataclass
class Environment:
    """One environment, passed explicitly to every workload step."""

    outputs: StackOutputs
    workdir: Path = field(default_factory=lambda: workdir_from(None))

    @property
    def tracking_uri(self) -> str:
        return self.outputs.tracking_uri

    @cached_property
    def s3(self) -> Any:
        """A boto3 S3 client for this environment's buckets (one per Environment, thread-safe)."""
        # Fail fast when the store is down instead of retrying for minutes.
        return self.s3_client(connect_timeout=5, read_timeout=30, max_attempts=2)

    def s3_client(self, *, connect_timeout: float, read_timeout: float, max_attempts: int) -> Any:
        """A new S3 client for this environment's buckets with its own timeouts (capture gives up faster)."""
        import boto3
        from botocore.config import Config

        credentials: dict[str, str] = {}
        if self.outputs.s3_endpoint and _is_loopback(self.outputs.s3_endpoint) \
                and not os.environ.get("AWS_ACCESS_KEY_ID"):
            credentials = {"aws_access_key_id": LOCAL_S3_KEY, "aws_secret_access_key": LOCAL_S3_KEY}
        return boto3.client(
            "s3",
            endpoint_url=self.outputs.s3_endpoint,
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": max_attempts, "mode": "standard"}),
            **credentials,
        )

    def mlflow_client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @contextmanager
    def tracking(self) -> Iterator[None]:
        """Point MLflow's fluent API (`mlflow.start_run`, `log_model`) here for the block, then restore."""
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # MLflow's own scoped setter

        # MLflow mirrors its URI into MLFLOW_TRACKING_URI and unsets it on the way out; a pod's own
        # value (rendered into its environment) must survive the block.
        given = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(self.tracking_uri):
                yield
        finally:
            if given is not None:
                os.environ["MLFLOW_TRACKING_URI"] = given


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _validated(values: dict[str, Any], source: str) -> StackOutputs:
    try:
        return StackOutputs.model_validate(values)
    except ValidationError as exc:
        missing = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise StackError(f"{source}: stack outputs incomplete or invalid ({missing})") from None


def from_pulumi(stack: str, cwd: Path | None = None) -> StackOutputs:
    pulumi_cli = shutil.which("pulumi")
    if pulumi_cli is None:
        raise StackError(
            f"--stack {stack}: the Pulumi CLI is not installed (https://www.pulumi.com/docs/install/); "
            "use the local stack (`mlops local up`) or set MLOPS_* environment variables instead"
        )
    proc = subprocess.run(
        [pulumi_cli, "stack", "output", "--json", "--show-secrets", "-s", stack],
        capture_output=True, text=True, cwd=cwd, check=False,
    )
    if proc.returncode != 0:
        raise StackError(f"pulumi stack output -s {stack} failed: {proc.stderr.strip()}")
    return _validated(json.loads(proc.stdout), f"pulumi stack {stack}")


def from_file(path: Path) -> StackOutputs:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StackError(f"{path}: not valid JSON ({exc})") from None
    return _validated(values, str(path))


def from_env(environ: dict[str, str] | None = None) -> StackOutputs | None:
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    for name in StackOutputs.model_fields:
        raw = environ.get(f"MLOPS_{name.upper()}")
        if raw is not None:
            values[name] = json.loads(raw) if name == "serving_endpoints" else raw
    values.setdefault("tracking_uri", environ.get("MLFLOW_TRACKING_URI"))
    if environ.get("MLFLOW_S3_ENDPOINT_URL"):
        values.setdefault("s3_endpoint", environ["MLFLOW_S3_ENDPOINT_URL"])
    values = {k: v for k, v in values.items() if v is not None}
    if not any(k in values for k in ("data_bucket", "artifact_bucket", "capture_bucket")):
        return None
    return _validated(values, "MLOPS_* environment variables")


def workdir_from(workdir: Path | str | None) -> Path:
    return Path(workdir or os.environ.get("MLOPS_WORKDIR") or DEFAULT_WORKDIR)


def environment(stack: str | None = None, workdir: Path | str | None = None) -> Environment:
    """The environment to work against, with its state directory (see `resolve`)."""
    return Environment(resolve(stack, workdir), workdir_from(workdir))


def resolve(stack: str | None = None, workdir: Path | str | None = None) -> StackOutputs:
    """The environment to work against: `--stack`, else the local stack, else MLOPS_* variables."""
    if stack:
        return from_pulumi(stack)
    outputs_file = workdir_from(workdir) / OUTPUTS_FILE
    if outputs_file.exists():
        return from_file(outputs_file)
    found = from_env()
    if found is None:
        raise StackError(
            f"no environment found: pass --stack NAME, start the local stack (`mlops local up`, "
            f"which writes {outputs_file}), or set MLOPS_DATA_BUCKET, MLOPS_ARTIFACT_BUCKET, "
            "MLOPS_CAPTURE_BUCKET, MLOPS_ENVIRONMENT and MLFLOW_TRACKING_URI"
        )
    return found
