"""The environment's namespace, with a quota and default limits for every container.

On a cluster another stack owns (cluster.mode existing, the ci environments), the namespace also
binds the CI role's group (components/access.py) as its admin before anything else goes in: that
group may only create `mlops-ci-*` namespaces and bind itself there (components/cluster_services.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.access import CI_GROUP
from components.cluster_services import CI_NAMESPACE_ADMIN


@dataclass(frozen=True)
class NamespaceArgs:
    namespace: str  # mlops-<env>
    environment: str
    small: bool  # ci and local: a small quota
    retain_on_delete: bool
    bind_ci_deployers: bool  # cluster.mode existing


class EnvironmentNamespace(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:namespace:EnvironmentNamespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(
            name,
            metadata={
                "name": args.namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "mlops-platform",
                    "mlops-platform/environment": args.environment,
                    # Enforce the restricted Pod Security Standard on everything in the namespace.
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain_on_delete),
        )
        self.name = namespace.metadata["name"]
        if args.bind_ci_deployers:
            binding = k8s.rbac.v1.RoleBinding(
                f"{name}-ci-deployers",
                metadata={"name": "ci-deployers", "namespace": self.name},
                subjects=[{"kind": "Group", "name": CI_GROUP, "apiGroup": "rbac.authorization.k8s.io"}],
                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CI_NAMESPACE_ADMIN},
                opts=child,
            )
            # Everything that goes in the namespace waits for the binding that lets the CI role put it there.
            self.name = pulumi.Output.all(self.name, binding.metadata["name"]).apply(lambda v: str(v[0]))
        small = args.small
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
