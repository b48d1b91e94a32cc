"""The stack outputs contract as environment variables inside pods.

Each output `<name>` is `MLOPS_<NAME>` in a pod, plus the standard MLFLOW_TRACKING_URI,
MLFLOW_S3_ENDPOINT_URL (when there is an S3 endpoint) and MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD from the tracking credentials Secret. Serving and jobs share it:
a Deployment carries the values inline (a changed value rolls its pods); Jobs read them from
the `workload-contract` ConfigMap (each run is a new pod, so it always sees the current values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from components.security import TELEMETRY_OFF


@dataclass(frozen=True)
class ContractValues:
    environment: str
    namespace: str
    tracking_uri: pulumi.Input[str]
    data_bucket: pulumi.Input[str]
    artifact_bucket: pulumi.Input[str]
    capture_bucket: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    tracking_credentials_secret: pulumi.Input[str]
    region: str | None = None
    kms_key_arn: pulumi.Input[str] | None = None
    s3_endpoint: pulumi.Input[str] | None = None
    s3_credentials_secret: pulumi.Input[str] | None = None  # cloud: none (MinIO)


def contract_env(values: ContractValues) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [*TELEMETRY_OFF]
    plain = {
        "environment": values.environment,
        "namespace": values.namespace,
        "tracking_uri": values.tracking_uri,
        "data_bucket": values.data_bucket,
        "artifact_bucket": values.artifact_bucket,
        "capture_bucket": values.capture_bucket,
        "cluster_name": values.cluster_name,
        "kms_key_arn": values.kms_key_arn,
        "s3_endpoint": values.s3_endpoint,
    }
    env += [{"name": f"MLOPS_{k.upper()}", "value": v} for k, v in plain.items() if v is not None]
    env.append({"name": "MLFLOW_TRACKING_URI", "value": values.tracking_uri})
    if values.s3_endpoint is not None:
        env.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": values.s3_endpoint})
    if values.region:
        env.append({"name": "AWS_REGION", "value": values.region})
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": values.tracking_credentials_secret,
                                                                "key": key}}})
    return env


def contract_env_from(values: ContractValues) -> list[dict[str, Any]]:
    """On cloud none the MinIO credentials Secret provides AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
    if values.s3_credentials_secret is None:
        return []
    return [{"secretRef": {"name": values.s3_credentials_secret}}]


@dataclass(frozen=True)
class ContractEnv:
    """How the contract reaches one pod: `env` entries and `envFrom` sources."""

    env: list[dict[str, Any]]
    env_from: list[dict[str, Any]]


def inline_contract(values: ContractValues) -> ContractEnv:
    return ContractEnv(contract_env(values), contract_env_from(values))


def configmap_contract(values: ContractValues, configmap: str) -> ContractEnv:
    """Plain values from the ConfigMap `configmap` (see `contract_configmap_data`); secrets stay secretKeyRefs."""
    secrets = [e for e in contract_env(values) if "valueFrom" in e]
    return ContractEnv(secrets, [{"configMapRef": {"name": configmap}}, *contract_env_from(values)])


def contract_configmap_data(values: ContractValues) -> dict[str, Any]:
    return {e["name"]: e["value"] for e in contract_env(values) if "value" in e}
