"""Which credentials each workload pod holds: its own MLflow user and, with MinIO, its own S3 user.

No workload pod holds an administrator credential. The tracking server's admin password stays in
the `mlflow-server` Secret (only the tracking Deployment mounts it); the MinIO root credential stays
in `minio-credentials` (only MinIO and its setup Job read it; the in-cluster backup has its own user).

- MLflow: one user per workload instance, `mlops-<role>-<name>` (`serving-churn` serves endpoint
  churn, `training-churn` runs training job churn, `monitoring-churn` monitors endpoint churn), with
  the grants components/mlflow_users.py plans; its Secret `mlflow-user-<role>-<name>` holds
  MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
- MinIO (cloud: none): one user per service account, like the IRSA roles on AWS (serving, training,
  monitoring, the tracking server, the labeler), with the same policy documents (components/workload_iam.py),
  and one for the database backup and restore Jobs (`backups/tracking/` only); its
  Secret `minio-user-<account>` holds AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.

Secret names follow from the workload, so every component derives them here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

MLFLOW_USER_PREFIX = "mlops-"  # every user the stack manages (and deletes when it leaves the plan)
TRACKING_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The MinIO users: one per service account that reaches S3 (tracking: the artifact proxy; labeler: the
# labeling process, the only writer of labels/<endpoint>/, whose Secret no pod of the stack reads; backup: the
# in-cluster Postgres's backup and restore Jobs, components/backup.py).
S3_ACCOUNTS = ("serving", "training", "monitoring", "tracking", "labeler", "backup")


def mlflow_username(role: str, name: str) -> str:
    return f"{MLFLOW_USER_PREFIX}{role}-{name}"


def mlflow_secret(username: str) -> str:
    return f"mlflow-user-{username.removeprefix(MLFLOW_USER_PREFIX)}"


def minio_username(account: str) -> str:
    return f"mlops-{account}"


def minio_secret(account: str) -> str:
    return f"minio-user-{account}"


@dataclass(frozen=True)
class WorkloadCredentials:
    """One pod's identity: its MLflow user and the service account whose S3 user it uses."""

    tracking_user: str
    s3_account: str

    @property
    def tracking_secret(self) -> str:
        return mlflow_secret(self.tracking_user)

    @property
    def s3_secret(self) -> str:
        return minio_secret(self.s3_account)


def serving(endpoint: str) -> WorkloadCredentials:
    return WorkloadCredentials(mlflow_username("serving", endpoint), "serving")


def training(job: str) -> WorkloadCredentials:
    return WorkloadCredentials(mlflow_username("training", job), "training")


def monitoring(endpoint: str) -> WorkloadCredentials:
    return WorkloadCredentials(mlflow_username("monitoring", endpoint), "monitoring")


def _after(name: str, ready: pulumi.Input[str] | None) -> pulumi.Input[str]:
    """`name`, resolved only once `ready` has: Pulumi then creates the pod after the Secret and its user."""
    if ready is None:
        return name
    return pulumi.Output.from_input(ready).apply(lambda _: name)


def credential_env(credentials: WorkloadCredentials, tracking_ready: pulumi.Input[str] | None,
                   s3_ready: pulumi.Input[str] | None, minio: bool) -> tuple[list[dict[str, Any]],
                                                                            list[dict[str, Any]]]:
    """(env, envFrom) of one pod: its MLflow user's pair, and with MinIO its own S3 user's Secret."""
    tracking = _after(credentials.tracking_secret, tracking_ready)
    env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": tracking, "key": key}}} for key in TRACKING_KEYS]
    env_from = [{"secretRef": {"name": _after(credentials.s3_secret, s3_ready)}}] if minio else []
    return env, env_from


@dataclass(frozen=True)
class GeneratedSecret:
    password: pulumi.Output[str]
    secret: k8s.core.v1.Secret


def generated_secret(parent: pulumi.Resource, resource_name: str, secret_name: str, namespace: pulumi.Input[str],
                     keys: Sequence[str], username: str, labels: dict[str, str]) -> GeneratedSecret:
    """A generated password (a Pulumi secret, stable until replaced) and the Secret holding the
    username and password under `keys`."""
    child = pulumi.ResourceOptions(parent=parent)
    password = random.RandomPassword(resource_name, length=32, special=False, opts=child).result
    secret = k8s.core.v1.Secret(resource_name, metadata={"name": secret_name, "namespace": namespace, "labels": labels},
                                string_data=dict(zip(keys, (username, password), strict=True)), opts=child)
    return GeneratedSecret(password, secret)
