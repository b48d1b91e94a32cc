"""Where the environment's Kubernetes workloads run, and the one provider that reaches it.

Modes (cluster.mode):
- `kubeconfig` (cloud: none): any cluster (kind, k3d, minikube) from a kubeconfig context.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.config import EnvironmentConfig, Secrets


@dataclass(frozen=True)
class ClusterArgs:
    env: EnvironmentConfig
    secrets: Secrets


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str] | None

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:cluster:Cluster", name, None, opts)
        env = args.env
        if env.cluster.mode != "kubeconfig":
            raise NotImplementedError(f"cluster.mode {env.cluster.mode!r}")
        # No kubeconfig secret: the provider reads ~/.kube/config (or $KUBECONFIG) like kubectl.
        self.kubeconfig = args.secrets.kubeconfig
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            context=env.cluster.context,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = pulumi.Output.from_input(env.cluster.context or "current-context")
        self.register_outputs({"name": self.name})
