"""The stack outputs contract as environment variables inside pods.

Each output `<name>` is `MLOPS_<NAME>` in a pod, plus the standard MLFLOW_TRACKING_URI and
MLFLOW_S3_ENDPOINT_URL (when there is an S3 endpoint). Serving and jobs share it: a Deployment
carries the values inline (a changed value rolls its pods); Jobs read them from the
`workload-contract` ConfigMap (each run is a new pod, so it always sees the current values).

Credentials are not part of the contract: each pod gets its own (components/credentials.py,
added by the pod builder). The contract only carries when they are in place: the two
`*_credentials_secret` values resolve once the tracking server's and the MinIO users' Secrets
exist, so pods are registered after them; their values are never given to a pod.
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
    # Resolves once every workload's MLflow credentials Secret exists (never mounted: see the module doc).
    tracking_credentials_secret: pulumi.Input[str]
    region: str | None = None
    kms_key_arn: pulumi.Input[str] | None = None
    s3_endpoint: pulumi.Input[str] | None = None
    # cloud: none: the MinIO root Secret, resolving once the per-account users exist (never mounted).
    s3_credentials_secret: pulumi.Input[str] | None = None


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
    return env


@dataclass(frozen=True)
class ContractEnv:
    """How the contract reaches one pod: `env` entries and `envFrom` sources, and when credentials are ready."""

    env: list[dict[str, Any]]
    env_from: list[dict[str, Any]]
    tracking_ready: pulumi.Input[str] | None = None
    s3_ready: pulumi.Input[str] | None = None  # None: no MinIO (IRSA on AWS)


def inline_contract(values: ContractValues) -> ContractEnv:
    return ContractEnv(contract_env(values), [], values.tracking_credentials_secret, values.s3_credentials_secret)


def configmap_contract(values: ContractValues, configmap: str) -> ContractEnv:
    """Every value from the ConfigMap `configmap` (see `contract_configmap_data`)."""
    return ContractEnv([], [{"configMapRef": {"name": configmap}}], values.tracking_credentials_secret,
                       values.s3_credentials_secret)


def contract_configmap_data(values: ContractValues) -> dict[str, Any]:
    return {e["name"]: e["value"] for e in contract_env(values)}
