"""In-cluster services a cluster we create needs, through the Kubernetes API (the Kubernetes layer).

- a default StorageClass (`gp3`, encrypted, EBS CSI): since Kubernetes 1.30 a new EKS cluster has
  none, and a PersistentVolumeClaim without a class (the in-cluster Postgres of a ci environment on
  this cluster) would stay Pending;
- the NVIDIA device plugin on GPU pools, so `nvidia.com/gpu` requests can be scheduled (the AL2023
  NVIDIA AMI brings the driver, not the plugin);
- the cluster-autoscaler (its IRSA role is created in the AWS layer, components/cluster.py);
- with `deploy.ciRoleName`: the RBAC and admission policy that confine the CI role's group to
  `mlops-ci-*` namespaces (components/access.py gives that role the group and nothing else).

The metrics-server the HPAs need is an EKS add-on (components/addons.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import access, eks_versions
from components.cluster import (
    AUTOSCALER_NAMESPACE,
    AUTOSCALER_SERVICE_ACCOUNT,
    POOL_LABEL,
    TRAINING_TAINT_KEY,
)
from components.config import ClusterConfig, DeployConfig

STORAGE_CLASS = "gp3"
DEVICE_PLUGIN_CHART = ("nvidia-device-plugin", "0.18.2", "https://nvidia.github.io/k8s-device-plugin")
GPU_NODE_LABEL = {"nvidia.com/gpu.present": "true"}  # what components/cluster.py puts on GPU pools
CI_NAMESPACE_ADMIN = "mlops-ci-namespace-admin"
CI_DEPLOYER = "mlops-ci-deployer"
# What a ci environment renders in its namespace (components/namespace.py ... jobs.py), and reads back.
WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]  # no escalate, bind or impersonate
CI_NAMESPACED_RULES = [
    {"apiGroups": [""], "resources": ["configmaps", "secrets", "services", "serviceaccounts",
                                      "persistentvolumeclaims", "resourcequotas", "limitranges", "pods"],
     "verbs": WRITE},
    {"apiGroups": [""], "resources": ["pods/log", "events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets"], "verbs": WRITE},
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": WRITE},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies", "ingresses"], "verbs": WRITE},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": WRITE},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": WRITE},
    # Roles it creates may hold only what it holds here (Kubernetes' escalation check).
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": WRITE},
]


@dataclass(frozen=True)
class ClusterServicesArgs:
    cluster: ClusterConfig
    deploy: DeployConfig
    cluster_name: pulumi.Input[str]
    region: str
    autoscaler_role_arn: pulumi.Input[str]
    retain_volumes: bool  # prod: a deleted claim keeps its EBS volume


class ClusterServices(pulumi.ComponentResource):
    def __init__(self, name: str, args: ClusterServicesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:cluster:ClusterServices", name, None, opts)
        k8s.storage.v1.StorageClass(
            f"{name}-{STORAGE_CLASS}",
            metadata={"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer",  # the volume is created in the pod's AZ
            allow_volume_expansion=True,
            reclaim_policy="Retain" if args.retain_volumes else "Delete",
            opts=pulumi.ResourceOptions(parent=self),
        )
        if any(pool.gpu for pool in args.cluster.training_pools):
            self._device_plugin(name)
        self._autoscaler(name, args)
        if args.deploy.ci_role_name:
            self._ci_deployers(name)
        self.register_outputs({})

    def _device_plugin(self, name: str) -> None:
        chart, version, repo = DEVICE_PLUGIN_CHART
        k8s.helm.v3.Release(
            f"{name}-nvidia-device-plugin",
            name="nvidia-device-plugin",
            chart=chart,
            version=version,
            namespace="kube-system",
            repository_opts={"repo": repo},
            values={
                "nodeSelector": GPU_NODE_LABEL,
                # GPU nodes are training nodes: tolerate their taint (any pool) and the NVIDIA one.
                "tolerations": [{"key": TRAINING_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _autoscaler(self, name: str, args: ClusterServicesArgs) -> None:
        tag, chart_version = eks_versions.autoscaler_release(args.cluster.version)
        k8s.helm.v3.Release(
            f"{name}-autoscaler",
            name="cluster-autoscaler",
            chart="cluster-autoscaler",
            version=chart_version,
            namespace=AUTOSCALER_NAMESPACE,
            repository_opts={"repo": "https://kubernetes.github.io/autoscaler"},
            values={
                "cloudProvider": "aws",
                "awsRegion": args.region,
                "autoDiscovery": {"clusterName": args.cluster_name},
                "image": {"tag": args.cluster.autoscaler_version or tag},
                "rbac": {"serviceAccount": {"name": AUTOSCALER_SERVICE_ACCOUNT,
                                            "annotations": {"eks.amazonaws.com/role-arn": args.autoscaler_role_arn}}},
                "extraArgs": {"balance-similar-node-groups": True, "skip-nodes-with-system-pods": False,
                              "expander": "least-waste"},
                "nodeSelector": {POOL_LABEL: "system"},
                "resources": {"requests": {"cpu": "100m", "memory": "300Mi"},
                              "limits": {"cpu": "500m", "memory": "600Mi"}},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "fsGroup": 65534,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}},
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _ci_deployers(self, name: str) -> None:
        """The CI role's group: create `mlops-ci-*` namespaces and bind itself as their admin, nothing else."""
        child = pulumi.ResourceOptions(parent=self)
        group = [{"kind": "Group", "name": access.CI_GROUP, "apiGroup": "rbac.authorization.k8s.io"}]
        k8s.rbac.v1.ClusterRole(f"{name}-ci-namespace-admin", metadata={"name": CI_NAMESPACE_ADMIN},
                                rules=CI_NAMESPACED_RULES, opts=child)
        deployer = k8s.rbac.v1.ClusterRole(f"{name}-ci-deployer", metadata={"name": CI_DEPLOYER}, rules=[
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "create", "patch", "update",
                                                                       "delete"]},
            # Only to bind the namespace-admin role inside its own namespaces (the policy below checks where).
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
             "verbs": ["get", "create", "patch", "update", "delete"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"],
             "resourceNames": [CI_NAMESPACE_ADMIN]},
        ], opts=child)
        k8s.rbac.v1.ClusterRoleBinding(f"{name}-ci-deployer", metadata={"name": CI_DEPLOYER}, subjects=group,
                                       role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                 "name": deployer.metadata["name"]}, opts=child)
        policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
            f"{name}-ci-own-namespaces", metadata={"name": "mlops-ci-own-namespaces"},
            spec=ci_admission_policy(), opts=child)
        k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
            f"{name}-ci-own-namespaces", metadata={"name": "mlops-ci-own-namespaces"},
            spec={"policyName": policy.metadata["name"], "validationActions": ["Deny"]}, opts=child)


def ci_admission_policy() -> dict[str, Any]:
    """Writes by the CI group only inside (or to) namespaces named `mlops-ci-*` (RBAC can't say "by name prefix")."""
    prefix = access.CI_NAMESPACE_PREFIX
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{
            "apiGroups": ["*"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"],
            "resources": ["*"]}]},
        "matchConditions": [{"name": "ci-deployers",
                             "expression": f"request.userInfo.groups.exists(g, g == '{access.CI_GROUP}')"}],
        "validations": [{
            "expression": (f"request.namespace.startsWith('{prefix}') || "
                           f"(request.resource.resource == 'namespaces' && request.name.startsWith('{prefix}'))"),
            "message": f"the CI role may only change namespaces named {prefix}* and what is in them",
        }],
    }
