"""EKS managed add-ons: what a new cluster needs before its pods can network, store data and scale.

All of them go through the EKS API (the AWS layer), so they install even while the Kubernetes API is
private and unreachable from where `pulumi up` runs (README: "Deploy").

- Before the nodes: `vpc-cni` with network policy enforcement on (`enableNetworkPolicy`; without it
  NetworkPolicy objects are accepted and ignored) and its own IRSA role (the node role no longer
  carries the CNI's permissions), `kube-proxy`, `eks-pod-identity-agent`. A node needs a CNI to
  become Ready, so the node groups depend on these.
- After the nodes (they need somewhere to run): `coredns`, `aws-ebs-csi-driver` (IRSA, volumes it
  tags), `metrics-server` (an EKS community add-on: the serving HPAs' CPU metrics).

Versions: the most recent build EKS publishes for the cluster's Kubernetes version, resolved at
deploy time (`get_addon_version_output(most_recent=True)`); an add-on upgrade shows in the preview.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

BEFORE_NODES = ("vpc-cni", "kube-proxy", "eks-pod-identity-agent")
AFTER_NODES = ("coredns", "aws-ebs-csi-driver", "metrics-server")
ADDONS = BEFORE_NODES + AFTER_NODES
# The VPC CNI's network policy agent: NetworkPolicies are enforced only with this (README: netpol).
VPC_CNI_CONFIGURATION = {"enableNetworkPolicy": "true"}
VPC_CNI_SERVICE_ACCOUNT = ("kube-system", "aws-node")
EBS_CSI_SERVICE_ACCOUNT = ("kube-system", "ebs-csi-controller-sa")
CNI_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"


def addon(parent: pulumi.Resource, name: str, cluster_name: pulumi.Input[str], addon_name: str,
          kubernetes_version: str, *, role_arn: pulumi.Input[str] | None = None,
          configuration: dict[str, Any] | None = None,
          depends_on: Sequence[pulumi.Resource] = ()) -> aws.eks.Addon:
    version = aws.eks.get_addon_version_output(addon_name=addon_name, kubernetes_version=kubernetes_version,
                                               most_recent=True, opts=pulumi.InvokeOutputOptions(parent=parent))
    return aws.eks.Addon(
        f"{name}-{addon_name}",
        cluster_name=cluster_name,
        addon_name=addon_name,
        addon_version=version.version,
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="OVERWRITE",
        service_account_role_arn=role_arn,
        configuration_values=json.dumps(configuration) if configuration else None,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )


def ebs_csi_policy() -> str:
    """The EBS CSI controller: volumes and snapshots it creates, tagged by the driver."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Describe", "Effect": "Allow", "Resource": "*", "Action": [
            "ec2:DescribeAvailabilityZones", "ec2:DescribeInstances", "ec2:DescribeSnapshots",
            "ec2:DescribeTags", "ec2:DescribeVolumes", "ec2:DescribeVolumesModifications"]},
        {"Sid": "CreateTagged", "Effect": "Allow", "Action": ["ec2:CreateVolume", "ec2:CreateSnapshot"],
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:snapshot/*"],
         "Condition": {"StringLike": {"aws:RequestTag/ebs.csi.aws.com/cluster": "true"}}},
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:snapshot/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": ["CreateVolume", "CreateSnapshot"]}}},
        {"Sid": "AttachVolumes", "Effect": "Allow",
         "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyVolume"],
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:instance/*"]},
        {"Sid": "DeleteOwnVolumes", "Effect": "Allow", "Action": ["ec2:DeleteVolume", "ec2:DeleteSnapshot"],
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:snapshot/*"],
         "Condition": {"StringLike": {"aws:ResourceTag/ebs.csi.aws.com/cluster": "true"}}},
    ]})
