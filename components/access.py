"""Who may use the cluster's Kubernetes API: EKS access entries, all of them in the stack.

The cluster is created without the creator's implicit admin entry
(`bootstrapClusterCreatorAdminPermissions: false`): nobody is a cluster admin because they
happened to run the first `pulumi up`. Every principal below is visible in the stack, reviewable
in a pull request and removed by deleting a line of config.

- the deploy role (`deploy.roleName`, what the deploy workflow assumes through OIDC):
  `AmazonEKSClusterAdminPolicy`, cluster scope. The environment's Kubernetes layer creates
  cluster-scoped objects (StorageClass, the cluster-autoscaler's and device plugin's RBAC,
  admission policies), and Kubernetes lets a principal grant RBAC only if it holds it, so nothing
  narrower can apply it. It is an entry of this stack, not the creator's bootstrap grant.
- break-glass humans (`deploy.adminRoleNames`): the same policy; empty by default.
- the CI role (`deploy.ciRoleName`, on the cluster that hosts ci environments): no access policy
  at all, only the Kubernetes group `mlops:ci-deployers`, whose RBAC and admission policy
  (components/cluster_services.py) confine it to namespaces named `mlops-ci-*`.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from components.config import DeployConfig

CLUSTER_ADMIN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
CI_GROUP = "mlops:ci-deployers"
CI_NAMESPACE_PREFIX = "mlops-ci-"


def role_arn(account: pulumi.Input[str], role_name: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("arn:aws:iam::", account, ":role/", role_name)


def access_entries(parent: pulumi.Resource, name: str, cluster_name: pulumi.Input[str], deploy: DeployConfig,
                   account: pulumi.Input[str], depends_on: list[Any]) -> None:
    """One access entry per principal that may use the Kubernetes API, each with its narrowest grant."""
    admins = {"deploy": deploy.role_name, **{f"admin-{i}": n for i, n in enumerate(deploy.admin_role_names)}}
    for role, role_name in admins.items():
        entry = aws.eks.AccessEntry(
            f"{name}-{role}", cluster_name=cluster_name, principal_arn=role_arn(account, role_name),
            type="STANDARD", opts=pulumi.ResourceOptions(parent=parent, depends_on=depends_on))
        aws.eks.AccessPolicyAssociation(
            f"{name}-{role}", cluster_name=cluster_name, principal_arn=entry.principal_arn,
            policy_arn=CLUSTER_ADMIN, access_scope={"type": "cluster"},
            opts=pulumi.ResourceOptions(parent=parent))
    if deploy.ci_role_name:
        aws.eks.AccessEntry(
            f"{name}-ci", cluster_name=cluster_name, principal_arn=role_arn(account, deploy.ci_role_name),
            type="STANDARD", kubernetes_groups=[CI_GROUP],
            opts=pulumi.ResourceOptions(parent=parent, depends_on=depends_on))
