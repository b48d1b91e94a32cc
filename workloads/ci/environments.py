"""Short-lived environments for CI: create `ci-<id>`, prove it works, destroy it, check for leaks.

    mlops env create ci-1234 --ttl 3h   # stack from stacks/Pulumi.ci.yaml, `pulumi up` (destroyed if up fails)
    mlops env smoke ci-1234             # train a small model, serve a prediction, run the monitor
    mlops env destroy ci-1234           # destroy, remove the stack, then fail on anything left behind
    mlops env reap --older-than 6h      # destroy environments a failed pipeline left behind

Pulumi's Automation API and the cluster sit behind two thin interfaces (`StackBackend`,
`ClusterClient`; the real ones are in `workloads/ci/backends.py`) so the orchestration (order
of steps, destroy on failure, leak detection, reaping selection) is unit-tested without the
Pulumi CLI. Leaks are found through the AWS
Resource Groups Tagging API (every resource carries the `environment` tag from the
provider's default tags) and by listing what is left in the environment's namespace.
"""

from __future__ import annotations

import io
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml

from workloads import layout
from workloads.errors import MlopsError, UsageError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "stacks" / "Pulumi.ci.yaml"
PROJECT = "mlops-platform"
NAME_PATTERN = r"^ci-[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
# Tags every resource of the environment carries (through the provider's default tags).
CREATED_TAG = "mlops-created-at"
EXPIRES_TAG = "mlops-expires-at"


class EnvError(MlopsError, RuntimeError):
    """An environment operation that cannot go on; the message says what to do."""


class EnvUsageError(EnvError, UsageError):
    """Refused before anything was done: a bad name or duration, or a missing tool (exit 2)."""


# --- durations and names ----------------------------------------------------------------

def parse_duration(text: str) -> timedelta:
    """`90m`, `6h`, `2d` -> timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text)
    if not match:
        raise EnvUsageError(f"duration {text!r}: use a number and a unit, e.g. 90m, 6h, 2d")
    value, unit = int(match.group(1)), match.group(2)
    return {"m": timedelta(minutes=value), "h": timedelta(hours=value), "d": timedelta(days=value)}[unit]


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise EnvUsageError(f"environment name {name!r}: must look like ci-<id> (lowercase letters, digits, '-', "
                       "at most 35 characters)")
    return name


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def parse_stamp(text: str) -> datetime:
    """The time in a TTL tag (`_stamp`'s format)."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC)


def stack_config(name: str, ttl: timedelta, now: datetime, template: Path = TEMPLATE) -> dict[str, Any]:
    """The ci template's config for `name`, with TTL tags; `secure:` placeholders are left out."""
    config = dict((yaml.safe_load(template.read_text()) or {}).get("config") or {})
    config = {k: v for k, v in config.items() if not (isinstance(v, dict) and set(v) == {"secure"})}
    config[f"{PROJECT}:name"] = name
    tags = dict(config.get(f"{PROJECT}:tags") or {})
    tags["extra"] = {**(tags.get("extra") or {}), CREATED_TAG: _stamp(now), EXPIRES_TAG: _stamp(now + ttl)}
    config[f"{PROJECT}:tags"] = tags
    return config


# --- interfaces -------------------------------------------------------------------------

@dataclass(frozen=True)
class EnvironmentInfo:
    name: str
    created_at: datetime | None
    expires_at: datetime | None


class StackBackend(Protocol):
    """What the orchestration needs from Pulumi (the Automation API in production)."""

    def create(self, name: str, config: dict[str, Any], secret_config: dict[str, str]) -> None: ...
    def up(self, name: str) -> dict[str, Any]: ...
    def outputs(self, name: str) -> dict[str, Any]: ...
    def destroy(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def environments(self) -> list[EnvironmentInfo]: ...


class ClusterClient(Protocol):
    """What the smoke test and the leak check need from Kubernetes (kubectl in production)."""

    def run_job_from(self, namespace: str, cronjob: str, timeout: float) -> None: ...
    def predict(self, namespace: str, service: str, payload: dict[str, Any]) -> dict[str, Any]: ...
    def leftovers(self, namespace: str) -> list[str]: ...


# --- leak detection ---------------------------------------------------------------------

def tagged_leaks(environment: str, tagging: Any, s3: Any | None = None) -> list[str]:
    """ARNs still tagged `environment=<name>`; buckets say how many objects they still hold."""
    leaks: list[str] = []
    for page in tagging.get_paginator("get_resources").paginate(
            TagFilters=[{"Key": "environment", "Values": [environment]}]):
        for item in page.get("ResourceTagMappingList", []):
            arn = item["ResourceARN"]
            if s3 is not None and arn.startswith("arn:aws:s3:::"):
                count = s3.list_objects_v2(Bucket=arn.removeprefix("arn:aws:s3:::")).get("KeyCount", 0)
                arn += f" ({count} objects)" if count else " (empty)"
            leaks.append(arn)
    return sorted(leaks)


def find_leaks(environment: str, tagging: Any, cluster: ClusterClient | None, s3: Any | None = None) -> list[str]:
    leaks = tagged_leaks(environment, tagging, s3)
    if cluster is not None:
        leaks += [f"kubernetes {item} in mlops-{environment}" for item in cluster.leftovers(f"mlops-{environment}")]
    return leaks


# --- orchestration ----------------------------------------------------------------------

@dataclass
class Environments:
    backend: StackBackend
    cluster: ClusterClient | None = None
    tagging: Any = None  # boto3 resourcegroupstaggingapi client
    s3: Any = None
    log: Callable[[str], None] = print
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def create(self, name: str, ttl: timedelta) -> dict[str, Any]:
        """Create the stack and `up` it; when `up` fails, destroy and remove it before re-raising."""
        check_name(name)
        config = stack_config(name, ttl, self.now())
        self.log(f"creating {name} (expires {config[f'{PROJECT}:tags']['extra'][EXPIRES_TAG]})")
        self.backend.create(name, config, {"trackingAdminPassword": secrets.token_urlsafe(24)})
        try:
            return self.backend.up(name)
        except BaseException:
            self.log(f"up failed: destroying {name}")
            self._destroy_quietly(name)
            raise

    def smoke(self, name: str, timeout: float = 1800) -> None:
        """Train a small model in-cluster, ask the endpoint for a prediction, run the monitor."""
        if self.cluster is None:
            raise EnvError("smoke needs a cluster client (kubectl)")
        outputs = self.backend.outputs(check_name(name))
        namespace = outputs["namespace"]
        trainings = outputs.get("training_jobs") or {}
        monitors = outputs.get("monitoring_cronjobs") or {}
        if not trainings or not monitors:
            raise EnvError(f"{name}: the stack has no training job or monitoring CronJob to smoke-test")
        job_name, training = next(iter(trainings.items()))
        if self.s3 is not None:
            # The shipped specs read s3://{data_bucket}/incoming/<name>.parquet: seed it with sample data.
            key = layout.incoming_key(job_name)
            self.log(f"smoke: seeding s3://{outputs['data_bucket']}/{key}")
            self.s3.put_object(Bucket=outputs["data_bucket"], Key=key, Body=smoke_training_data())
        self.log(f"smoke: training ({training})")
        self.cluster.run_job_from(namespace, training, timeout)
        endpoint = next(iter(monitors))
        self.log(f"smoke: prediction from serve-{endpoint}")
        answer = self.cluster.predict(namespace, f"serve-{endpoint}", smoke_payload())
        if "predictions" not in answer:
            raise EnvError(f"serve-{endpoint} answered without predictions: {answer}")
        self.log(f"smoke: monitoring ({monitors[endpoint]})")
        self.cluster.run_job_from(namespace, monitors[endpoint], timeout)

    def destroy(self, name: str) -> list[str]:
        """Destroy and remove the stack whatever state it is in, then return what leaked."""
        check_name(name)
        error: BaseException | None = None
        try:
            self.backend.destroy(name)
        except Exception as exc:  # still remove the stack and look for leaks: they are the point
            error = exc
            self.log(f"destroy failed: {exc}")
        if error is None:
            self.backend.remove(name)
        leaks = self.leaks(name)
        if error is not None:
            raise EnvError(f"destroy of {name} failed ({error}); still present: {leaks or 'nothing found'}")
        return leaks

    def leaks(self, name: str) -> list[str]:
        if self.tagging is None:
            return []
        return find_leaks(name, self.tagging, self.cluster, self.s3)

    def expired(self, older_than: timedelta) -> list[EnvironmentInfo]:
        """ci environments past their TTL, or created longer ago than `older_than`."""
        now = self.now()
        chosen = []
        for env in self.backend.environments():
            if not re.fullmatch(NAME_PATTERN, env.name):
                continue  # never touch dev, staging, prod
            if (env.expires_at and env.expires_at <= now) or (env.created_at and env.created_at <= now - older_than):
                chosen.append(env)
        return chosen

    def reap(self, older_than: timedelta, dry_run: bool = False) -> dict[str, list[str] | str]:
        """Destroy every expired environment; returns name -> leaks (or the error)."""
        results: dict[str, list[str] | str] = {}
        for env in self.expired(older_than):
            if dry_run:
                results[env.name] = []
                continue
            try:
                results[env.name] = self.destroy(env.name)
            except Exception as exc:
                results[env.name] = str(exc)
        return results

    def _destroy_quietly(self, name: str) -> None:
        try:
            self.backend.destroy(name)
            self.backend.remove(name)
        except Exception as exc:
            self.log(f"cleanup of {name} failed: {exc} (the reaper will retry)")


def smoke_training_data(rows: int = 2000) -> bytes:
    """A small labelled sample dataset as Parquet, for the smoke test's training Job."""
    from workloads.data.sample import generate

    buffer = io.BytesIO()
    generate(rows, seed=0).to_parquet(buffer, index=False)
    return buffer.getvalue()


def smoke_payload() -> dict[str, Any]:
    """One row in MLflow's scoring protocol (`dataframe_split`), from the sample dataset."""
    from workloads.data.sample import generate

    frame = generate(1, seed=7, labels=False)
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False, date_format="iso"))}
