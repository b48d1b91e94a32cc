"""The policy pack passes on every rendered stack, and each policy fires on a violating example.

The validators are the exact functions `pulumi preview --policy-pack policies` runs; here
they get the engine's argument objects built from the offline render (`policies.offline`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest

from components.render import RenderedResource, RenderResult
from policies.offline import check
from policies.pack import policy_list
from policies.rules import RULES, is_pinned, is_prod
from tests.infra.conftest import ALL_STACKS

RULE_NAMES = [rule.name for rule in RULES]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_policy_passes_on_every_stack(rendered: dict[str, RenderResult], stack: str) -> None:
    assert check(rendered[stack]) == []


def test_pack_has_every_rule_mandatory() -> None:
    policies = policy_list()
    assert [p.name for p in policies] == RULE_NAMES and len(set(RULE_NAMES)) == len(RULE_NAMES)
    assert all(p.enforcement_level.value == "mandatory" for p in policies)


# --- violating examples: each is a real render with one thing broken --------------------

def mutated(result: RenderResult, change: Callable[[list[RenderedResource]], None]) -> RenderResult:
    resources = copy.deepcopy(result.resources)
    change(resources)
    return RenderResult(result.stack, resources, result.outputs, result.secret_outputs)


def first(resources: list[RenderedResource], type_: str, name_part: str = "") -> RenderedResource:
    return next(r for r in resources if r.type == type_ and name_part in r.name)


def drop(type_: str, name_part: str) -> Callable[[list[RenderedResource]], None]:
    def change(resources: list[RenderedResource]) -> None:
        resources.remove(first(resources, type_, name_part))
    return change


def set_input(type_: str, path: list[str], value, name_part: str = "") -> Callable[[list[RenderedResource]], None]:
    def change(resources: list[RenderedResource]) -> None:
        target = first(resources, type_, name_part).inputs
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def unprotect(type_: str, name_part: str = "") -> Callable[[list[RenderedResource]], None]:
    def change(resources: list[RenderedResource]) -> None:
        first(resources, type_, name_part).protect = False
    return change


EKS = "aws:eks/cluster:Cluster"
RDS = "aws:rds/instance:Instance"


def container_of(resources: list[RenderedResource], name: str) -> dict:
    deployment = first(resources, "kubernetes:apps/v1:Deployment", name)
    return deployment.inputs["spec"]["template"]["spec"]["containers"][0]


def root_container(resources: list[RenderedResource]) -> None:
    c = container_of(resources, "serving-churn")
    c["securityContext"]["runAsNonRoot"] = False
    c["securityContext"]["runAsUser"] = 0
    first(resources, "kubernetes:apps/v1:Deployment", "serving-churn").inputs["spec"]["template"]["spec"][
        "securityContext"]["runAsNonRoot"] = False


def no_limits(resources: list[RenderedResource]) -> None:
    del container_of(resources, "serving-churn")["resources"]["limits"]


def latest_image(resources: list[RenderedResource]) -> None:
    c = first(resources, "kubernetes:batch/v1:CronJob", "monitor").inputs["spec"]["jobTemplate"]["spec"][
        "template"]["spec"]["containers"][0]
    c["image"] = "ghcr.io/mlops-platform/workloads:latest"


def untagged_provider(resources: list[RenderedResource]) -> None:
    provider = first(resources, "pulumi:providers:aws")
    provider.inputs["defaultTags"] = json.dumps({"tags": {"owner": "ml-platform"}})


def star_write(resources: list[RenderedResource]) -> None:
    policy = first(resources, "aws:iam/rolePolicy:RolePolicy", "training")
    policy.inputs["policy"] = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "*"}]})


def wildcard_action(resources: list[RenderedResource]) -> None:
    policy = first(resources, "aws:iam/rolePolicy:RolePolicy", "monitoring")
    doc = json.loads(policy.inputs["policy"])
    doc["Statement"][0]["Action"] = "s3:*"
    policy.inputs["policy"] = json.dumps(doc)


def plain_http_allowed(resources: list[RenderedResource]) -> None:
    first(resources, "aws:s3/bucketPolicy:BucketPolicy", "data").inputs["policy"] = json.dumps(
        {"Version": "2012-10-17", "Statement": []})


VIOLATIONS = {
    "s3-bucket-encrypted": ("dev", drop("aws:s3/bucketServerSideEncryptionConfiguration:"
                                        "BucketServerSideEncryptionConfiguration", "capture")),
    "s3-bucket-versioned": ("staging", set_input("aws:s3/bucketVersioning:BucketVersioning",
                                                 ["versioningConfiguration", "status"], "Suspended", "data")),
    "s3-bucket-private": ("ci", set_input("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
                                          ["restrictPublicBuckets"], False, "artifacts")),
    "s3-bucket-tls-only": ("prod", plain_http_allowed),
    "eks-no-public-endpoint-in-prod": ("prod", set_input("aws:eks/cluster:Cluster",
                                                         ["vpcConfig", "endpointPublicAccess"], True)),
    "rds-encrypted-deletion-protected": ("prod", set_input("aws:rds/instance:Instance",
                                                           ["deletionProtection"], False)),
    "prod-stateful-protected": ("prod", unprotect("aws:s3/bucket:Bucket")),
    "containers-non-root-limits-pinned": ("local", root_container),
    "aws-required-tags": ("dev", untagged_provider),
    "iam-no-write-on-star": ("staging", star_write),
    "network-policies-enforced": ("dev", set_input("aws:eks/addon:Addon", ["configurationValues"], None, "vpc-cni")),
    "eks-supported-version": ("staging", set_input(EKS, ["version"], "1.34")),  # standard support ended 2026-12-02
    "eks-explicit-access": ("prod", set_input(EKS, ["accessConfig", "bootstrapClusterCreatorAdminPermissions"], True)),
    "prod-keys-and-logs-protected": ("prod", unprotect("aws:kms/key:Key", "database-key")),
    "rds-enhanced-monitoring-in-prod": ("prod", set_input(RDS, ["monitoringInterval"], 0)),
    "ecr-immutable-scanned-encrypted": ("dev", set_input("aws:ecr/repository:Repository", ["imageTagMutability"],
                                                         "MUTABLE")),
    "s3-access-logging": ("staging", drop("aws:s3/bucketLogging:BucketLogging", "data")),
}
EXTRA_VIOLATIONS = {
    "rds encryption off (any stack)": ("dev", "rds-encrypted-deletion-protected",
                                       set_input("aws:rds/instance:Instance", ["storageEncrypted"], False)),
    "no limits": ("dev", "containers-non-root-limits-pinned", no_limits),
    "latest image": ("ci", "containers-non-root-limits-pinned", latest_image),
    "wildcard action": ("prod", "iam-no-write-on-star", wildcard_action),
    "bucket versioning removed": ("local", None, lambda resources: None),  # no AWS buckets: nothing to check
    "no vpc-cni add-on at all": ("staging", "network-policies-enforced", drop("aws:eks/addon:Addon", "vpc-cni")),
    "network policy agent off": ("prod", "network-policies-enforced", set_input(
        "aws:eks/addon:Addon", ["configurationValues"], json.dumps({"enableNetworkPolicy": "false"}), "vpc-cni")),
    "extended support type": ("dev", "eks-supported-version", set_input(EKS, ["upgradePolicy", "supportType"],
                                                                         "EXTENDED")),
    "version with no support dates": ("prod", "eks-supported-version", set_input(EKS, ["version"], "1.36")),
    "config-map authentication": ("dev", "eks-explicit-access", set_input(EKS, ["accessConfig", "authenticationMode"],
                                                                           "API_AND_CONFIG_MAP")),
    "prod bucket setting unprotected": ("prod", "prod-keys-and-logs-protected", unprotect(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "artifacts")),
    "prod log group unprotected": ("prod", "prod-keys-and-logs-protected", unprotect(
        "aws:cloudwatch/logGroup:LogGroup", "cluster-logs")),
    "prod registry unprotected": ("prod", "prod-keys-and-logs-protected", unprotect("aws:ecr/repository:Repository")),
    "no scan on push": ("prod", "ecr-immutable-scanned-encrypted", set_input(
        "aws:ecr/repository:Repository", ["imageScanningConfiguration", "scanOnPush"], False)),
    "prod bucket without access logs": ("prod", "s3-access-logging", drop("aws:s3/bucketLogging:BucketLogging",
                                                                          "capture")),
    "dev has no access logs, and needs none": ("dev", None, lambda resources: None),
}


def test_every_policy_has_a_violating_example() -> None:
    assert set(VIOLATIONS) == set(RULE_NAMES)


@pytest.mark.parametrize("policy", RULE_NAMES)
def test_policy_fires_on_its_violation(rendered: dict[str, RenderResult], policy: str) -> None:
    stack, change = VIOLATIONS[policy]
    found = check(mutated(rendered[stack], change))
    assert found, f"{policy} did not fire"
    # Exactly the broken promise fires, and it names the resource or bucket.
    assert {v.policy for v in found} == {policy}
    assert all(v.message for v in found)


@pytest.mark.parametrize("case", sorted(EXTRA_VIOLATIONS))
def test_more_violations(rendered: dict[str, RenderResult], case: str) -> None:
    stack, policy, change = EXTRA_VIOLATIONS[case]
    found = {v.policy for v in check(mutated(rendered[stack], change))}
    assert found == ({policy} if policy else set())


def test_prod_only_rules_do_not_fire_elsewhere(rendered: dict[str, RenderResult]) -> None:
    # A public EKS endpoint (to listed CIDRs) and unprotected buckets are allowed outside prod.
    dev = mutated(rendered["dev"], set_input("aws:eks/cluster:Cluster", ["vpcConfig", "endpointPublicAccess"], True))
    assert not first(dev.resources, "aws:s3/bucket:Bucket").protect
    assert check(dev) == []


@pytest.mark.parametrize(("urn", "prod"), [
    ("urn:pulumi:prod::mlops-platform::aws:s3/bucket:Bucket::b", True),
    ("urn:pulumi:prod-eu::mlops-platform::aws:s3/bucket:Bucket::b", True),
    ("urn:pulumi:production-ish::p::t::n", False),
    ("urn:pulumi:ci-prod::p::t::n", False),
])
def test_prod_recognized_from_the_urn(urn: str, prod: bool) -> None:
    assert is_prod(urn) is prod


@pytest.mark.parametrize(("image", "pinned"), [
    ("postgres:16.4-alpine", True), ("ghcr.io/x/y@sha256:" + "a" * 64, True), ("registry:5000/x/y:1.2", True),
    ("nginx", False), ("nginx:latest", False), ("registry:5000/x/y", False),
])
def test_image_pinning(image: str, pinned: bool) -> None:
    assert is_pinned(image) is pinned
