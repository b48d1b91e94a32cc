"""IAM roles for Kubernetes service accounts (IRSA), bound to exactly one service account.

The trust policy admits a web identity from the cluster's OIDC provider only when the
token's `sub` is `system:serviceaccount:<namespace>:<name>` AND its `aud` is
`sts.amazonaws.com`; the inline policies name specific resources. On `cloud: none` there
is no IAM: `irsa_role` returns None and workloads use the MinIO credentials Secret.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.config import Cloud, EnvironmentConfig


@dataclass(frozen=True)
class OidcProvider:
    """The cluster's IAM OIDC provider: its ARN and issuer URL without `https://`."""

    arn: pulumi.Input[str]
    url: pulumi.Input[str]


def trust_policy(provider_arn: str, provider_url: str, namespace: str, service_account: str) -> str:
    issuer = provider_url.removeprefix("https://")
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                f"{issuer}:aud": "sts.amazonaws.com",
            }},
        }],
    })


def irsa_role(
    name: str,
    env: EnvironmentConfig,
    oidc: OidcProvider | None,
    namespace: str,
    service_account: str,
    policy: pulumi.Input[str] | None,
    parent: pulumi.Resource,
    managed_policy_arns: Sequence[str] = (),
) -> aws.iam.Role | None:
    """A role only `<namespace>/<service_account>` can assume, with one inline policy (a JSON document)
    and/or AWS-managed policies (for add-ons whose permissions AWS maintains, such as the VPC CNI's)."""
    if env.cloud != Cloud.aws or oidc is None:
        return None
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(
        name,
        description=f"IRSA for {namespace}/{service_account}",
        assume_role_policy=pulumi.Output.all(oidc.arn, oidc.url).apply(
            lambda v: trust_policy(v[0], v[1], namespace, service_account)),
        max_session_duration=3600,
        opts=child,
    )
    if policy is not None:
        aws.iam.RolePolicy(name, role=role.id, policy=policy, opts=child)
    for arn in managed_policy_arns:
        aws.iam.RolePolicyAttachment(f"{name}-{arn.rsplit('/', 1)[1]}", role=role.name, policy_arn=arn, opts=child)
    return role


def service_account_annotations(role: aws.iam.Role | None) -> dict[str, Any]:
    return {"eks.amazonaws.com/role-arn": role.arn} if role is not None else {}
