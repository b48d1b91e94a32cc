"""The environment's namespace, with a quota and default limits for every container."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.config import EnvironmentConfig, Kind


@dataclass(frozen=True)
class NamespaceArgs:
    env: EnvironmentConfig


class EnvironmentNamespace(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:namespace:EnvironmentNamespace", name, None, opts)
        env = args.env
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(
            name,
            metadata={
                "name": env.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "mlops-platform",
                    "mlops-platform/environment": env.name,
                    # Enforce the restricted Pod Security Standard on everything in the namespace.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=env.retain_on_delete),
        )
        self.name = namespace.metadata["name"]
        small = env.kind in (Kind.ci, Kind.local)
        k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata={"name": "environment-quota", "namespace": self.name},
            spec={"hard": {
                "requests.cpu": "8" if small else "64",
                "requests.memory": "16Gi" if small else "256Gi",
                "limits.cpu": "16" if small else "128",
                "limits.memory": "32Gi" if small else "512Gi",
                "persistentvolumeclaims": "10" if small else "50",
                "requests.nvidia.com/gpu": "0" if small else "16",
            }},
            opts=child,
        )
        k8s.core.v1.LimitRange(
            f"{name}-limits",
            metadata={"name": "container-defaults", "namespace": self.name},
            spec={"limits": [{
                "type": "Container",
                "default": {"cpu": "500m", "memory": "512Mi"},
                "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                "max": {"cpu": "16", "memory": "64Gi"},
            }]},
            opts=child,
        )
        self.register_outputs({"name": self.name})
