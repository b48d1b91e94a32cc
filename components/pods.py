"""One pod builder for every workload pod (serving, training, monitoring).

What each of them repeats is written here once: the workload image and its pull policy, the
restricted security contexts, the contract environment, a writable emptyDir at /tmp (the root
filesystem is read-only) with HOME and MLOPS_WORKDIR inside it, no automounted API token, and
the service account, and the pod's own credentials (components/credentials.py: its MLflow user
and, with MinIO, its S3 user; never an administrator's). A component gives only what differs: the
container's command, arguments, resources, extra env and mounts, placement, extra volumes and
whose credentials the pod carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.cluster import POOL_LABEL
from components.config import EnvironmentConfig
from components.credentials import WorkloadCredentials, credential_env
from components.irsa import OidcProvider
from components.podenv import ContractEnv, ContractValues
from components.security import container_security_context, pod_security_context, scratch_volume

SCRATCH = "/tmp"
# MLOPS_WORKDIR: where a workload keeps files (the monitor's alerts.jsonl, local state); the CLI reads it.
WORKDIR = f"{SCRATCH}/mlops"


@dataclass(frozen=True)
class WorkloadArgs:
    """What a workload component (serving, jobs) gets: the environment, the contract, the bucket ARNs."""

    env: EnvironmentConfig
    namespace: pulumi.Input[str]
    contract: ContractValues
    capture_bucket_arn: pulumi.Input[str]
    data_bucket_arn: pulumi.Input[str] | None = None  # jobs only
    artifact_bucket_arn: pulumi.Input[str] | None = None  # never granted: artifacts go through the tracking server
    oidc: OidcProvider | None = None


@dataclass(frozen=True)
class Container:
    """The part of a workload container that differs between workloads."""

    name: str
    command: list[str]
    args: pulumi.Input[Sequence[str]]
    resources: dict[str, Any]
    env: Sequence[dict[str, Any]] = ()
    mounts: Sequence[dict[str, Any]] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # ports, probes


@dataclass(frozen=True)
class WorkloadPod:
    account: pulumi.Input[str]
    container: Container
    scratch_size: str
    credentials: WorkloadCredentials
    placement: Mapping[str, Any] = field(default_factory=dict)  # nodeSelector, tolerations, spread
    volumes: Sequence[dict[str, Any]] = ()
    restart_policy: str | None = None  # Jobs: Never; Deployments: the default (Always)


@dataclass(frozen=True)
class PodBuilder:
    image: str
    contract: ContractEnv

    def spec(self, pod: WorkloadPod) -> dict[str, Any]:
        c, contract = pod.container, self.contract
        own_env, own_env_from = credential_env(pod.credentials, contract.tracking_ready, contract.s3_ready,
                                               minio=contract.s3_ready is not None)
        container = {
            "name": c.name,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": c.command,
            "args": c.args,
            "env": [*contract.env, *own_env, *c.env, {"name": "HOME", "value": SCRATCH},
                    {"name": "MLOPS_WORKDIR", "value": WORKDIR}],
            "envFrom": [*contract.env_from, *own_env_from],
            **c.extra,
            "resources": c.resources,
            "securityContext": container_security_context(),
            "volumeMounts": [{"name": "tmp", "mountPath": SCRATCH}, *c.mounts],
        }
        return {
            "serviceAccountName": pod.account,
            "automountServiceAccountToken": False,
            **({"restartPolicy": pod.restart_policy} if pod.restart_policy else {}),
            "securityContext": pod_security_context(),
            **pod.placement,
            "containers": [container],
            "volumes": [scratch_volume("tmp", pod.scratch_size), *pod.volumes],
        }


def pod_builder(env: EnvironmentConfig, contract: ContractEnv) -> PodBuilder:
    return PodBuilder(env.workload_image, contract)


def system_placement(env: EnvironmentConfig) -> dict[str, Any]:
    """Endpoints and monitors run on the on-demand system pool (a plain kubeconfig cluster has none)."""
    if env.cluster.mode in ("create", "existing"):
        return {"nodeSelector": {POOL_LABEL: "system"}}
    return {}
