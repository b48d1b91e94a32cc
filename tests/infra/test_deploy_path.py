"""The private-API deploy path and the image registry (issue 13, items 4, 6 and 9's deploy role).

The API endpoint is private everywhere; the Kubernetes layer is applied from a runner inside the VPC
that the AWS layer creates, so a new account's first pass (`deploy.bootstrap`) stops at the AWS
layer. Access is explicit: access entries for the deploy role (cluster admin, no creator bootstrap
grant), break-glass admins, and a CI role confined to `mlops-ci-*` namespaces by RBAC and a
ValidatingAdmissionPolicy whose CEL is evaluated here.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import celpy
import pytest

from components.access import CI_GROUP, CLUSTER_ADMIN
from components.cluster_services import CI_NAMESPACE_ADMIN, ci_admission_policy
from components.config import ConfigError
from components.render import RenderResult, render_stack
from components.stack_file import load_stack_config, stack_file
from tests.infra.conftest import ADMIN_PASSWORD

CREATE = ["dev", "staging", "prod"]
ENTRY = "aws:eks/accessEntry:AccessEntry"
ASSOCIATION = "aws:eks/accessPolicyAssociation:AccessPolicyAssociation"


def render(stack: str, **sections: Any) -> RenderResult:
    config = load_stack_config(stack_file(stack))
    for key, value in sections.items():
        config[f"mlops-platform:{key}"] = {**config.get(f"mlops-platform:{key}", {}), **value}
    return render_stack(stack, config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})


# --- bootstrap: the AWS layer alone -----------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_bootstrap_pass_registers_no_kubernetes_object(stack: str) -> None:
    result = render(stack, deploy={"bootstrap": True})
    assert result.outputs["bootstrap"] is True
    objects = [r for r in result.resources if r.custom and r.type.startswith("kubernetes:")]
    assert objects == []
    types = result.types()
    for needed in ("aws:eks/cluster:Cluster", "aws:eks/nodeGroup:NodeGroup", "aws:eks/addon:Addon", ENTRY,
                   "aws:autoscaling/group:Group", "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        assert needed in types, f"the bootstrap pass lacks {needed}"


@pytest.mark.parametrize("stack", CREATE)
def test_the_full_pass_applies_the_kubernetes_layer(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert result.outputs["bootstrap"] is False
    assert result.of_type("kubernetes:apps/v1:Deployment")
    assert result.one("aws:autoscaling/group:Group")  # the runner stays: every later pass runs on it


def test_bootstrap_only_where_the_stack_creates_the_cluster() -> None:
    with pytest.raises(ConfigError, match="deploy.bootstrap: true applies only to a stack that creates its EKS"):
        render("ci", deploy={"bootstrap": True})


# --- the runner inside the VPC ------------------------------------------------------------------

@pytest.mark.parametrize("stack", CREATE)
def test_the_runner_is_the_only_way_to_the_private_api(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert result.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]["endpointPublicAccess"] is False
    group = result.one("aws:ec2/securityGroup:SecurityGroup", "runner-sg")
    assert group.inputs["ingress"] == []
    assert [(e["fromPort"], e["toPort"], e["protocol"]) for e in group.inputs["egress"]] == [(443, 443, "tcp")]
    rule = result.one("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "runner-to-api")
    assert rule.inputs["securityGroupId"] == result.outputs["cluster_security_group_id"]
    assert rule.inputs["referencedSecurityGroupId"] == f"{group.name}-id"  # the runner group's id
    assert (rule.inputs["fromPort"], rule.inputs["toPort"]) == (443, 443)


@pytest.mark.parametrize("stack", CREATE)
def test_the_runner_instance_is_locked_down(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    template = result.one("aws:ec2/launchTemplate:LaunchTemplate", "runner")
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    script = base64.b64decode(template.inputs["userData"]).decode()
    assert f"--labels mlops-{stack}" in script and f"/mlops/{stack}/github-runner/registration-token" in script
    asg = result.one("aws:autoscaling/group:Group")
    assert asg.inputs["vpcZoneIdentifiers"] == result.outputs["private_subnet_ids"]
    tags = {t["key"]: t["value"] for t in asg.inputs["tags"]}
    assert {"owner", "cost-center", "environment"} <= set(tags) and tags["environment"] == stack
    (policy,) = [r for r in result.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "runner-instance"]
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert [s["Action"] for s in statements] == ["ssm:GetParameter"]
    assert statements[0]["Resource"].endswith(f":parameter/mlops/{stack}/github-runner/*")


# --- access entries -------------------------------------------------------------------------------

def _entries(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {e.name.removeprefix("cluster-access-"): e.inputs for e in result.of_type(ENTRY)}


@pytest.mark.parametrize("stack", CREATE)
def test_no_creator_admin_and_the_deploy_role_is_an_entry_of_the_stack(rendered: dict[str, RenderResult],
                                                                       stack: str) -> None:
    result = rendered[stack]
    access = result.one("aws:eks/cluster:Cluster").inputs["accessConfig"]
    assert access == {"authenticationMode": "API", "bootstrapClusterCreatorAdminPermissions": False}
    entries = _entries(result)
    assert entries["deploy"]["principalArn"] == "arn:aws:iam::123456789012:role/mlops-deploy"
    (admin,) = [a.inputs for a in result.of_type(ASSOCIATION)]  # no other admin by default
    assert admin["policyArn"] == CLUSTER_ADMIN and admin["accessScope"] == {"type": "cluster"}


def test_only_dev_admits_the_ci_role_and_only_through_its_group(rendered: dict[str, RenderResult]) -> None:
    ci = _entries(rendered["dev"])["ci"]
    assert ci["principalArn"].endswith(":role/mlops-ci") and ci["kubernetesGroups"] == [CI_GROUP]
    assert all("ci" not in a.name for a in rendered["dev"].of_type(ASSOCIATION))  # no EKS access policy
    assert "ci" not in _entries(rendered["staging"]) and "ci" not in _entries(rendered["prod"])


def test_break_glass_admins_from_config() -> None:
    result = render("prod", deploy={"adminRoleNames": ["platform-oncall"]})
    assert _entries(result)["admin-0"]["principalArn"].endswith(":role/platform-oncall")
    assert len(result.of_type(ASSOCIATION)) == 2


# --- the CI role: its own namespaces only -----------------------------------------------------------

def _evaluate(expression: str, request: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return bool(program.evaluate({"request": celpy.json_to_cel(request)}))


@pytest.mark.parametrize(("namespace", "resource", "name", "allowed"), [
    ("mlops-ci-1234", "secrets", "tracking-credentials", True),
    ("", "namespaces", "mlops-ci-1234", True),
    ("mlops-dev", "secrets", "mlflow-server", False),
    ("mlops-dev", "rolebindings", "ci-deployers", False),
    ("", "namespaces", "mlops-dev", False),
    ("", "clusterroles", "mlops-ci-namespace-admin", False),
    ("kube-system", "configmaps", "aws-auth", False),
])
def test_the_admission_policy_confines_the_ci_group(namespace: str, resource: str, name: str, allowed: bool) -> None:
    policy = ci_admission_policy()
    (condition,) = policy["matchConditions"]
    assert _evaluate(condition["expression"], {"userInfo": {"groups": [CI_GROUP, "system:authenticated"]}})
    assert not _evaluate(condition["expression"], {"userInfo": {"groups": ["system:masters"]}})
    request = {"namespace": namespace, "name": name, "resource": {"resource": resource}}
    assert _evaluate(policy["validations"][0]["expression"], request) is allowed


def test_dev_renders_the_ci_rbac_and_binds_the_policy(rendered: dict[str, RenderResult]) -> None:
    result = rendered["dev"]
    binding = result.one("kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding",
                         "services-ci-own-namespaces")
    assert binding.inputs["spec"]["validationActions"] == ["Deny"]
    policy = result.one("kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy",
                        "services-ci-own-namespaces")
    assert policy.inputs["spec"] == json.loads(json.dumps(ci_admission_policy()))
    roles = {r.inputs["metadata"]["name"]: r.inputs["rules"] for r in result.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole")}
    bind = next(rule for rule in roles["mlops-ci-deployer"] if rule["resources"] == ["clusterroles"])
    assert bind["verbs"] == ["bind"] and bind["resourceNames"] == [CI_NAMESPACE_ADMIN]
    assert not any("secrets" in rule["resources"] for rule in roles["mlops-ci-deployer"])  # nothing to read
    assert not [p for p in rendered["prod"].of_type("kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy")
                if p.name == "services-ci-own-namespaces"]


def test_a_ci_namespace_binds_the_ci_group_before_anything_goes_in(rendered: dict[str, RenderResult]) -> None:
    result = rendered["ci"]
    binding = result.one("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding", "namespace-ci-deployers")
    assert binding.inputs["roleRef"]["name"] == CI_NAMESPACE_ADMIN
    assert binding.inputs["subjects"] == [{"kind": "Group", "name": CI_GROUP,
                                           "apiGroup": "rbac.authorization.k8s.io"}]
    namespaced = [r for r in result.resources if r.custom and r.type.startswith("kubernetes:")
                  and r.type != "kubernetes:core/v1:Namespace" and r.urn != binding.urn]
    assert namespaced and all(binding.urn in r.depends_on for r in namespaced if "namespace" in
                              (r.inputs.get("metadata") or {}))


# --- the registry (item 6) ---------------------------------------------------------------------------

@pytest.mark.parametrize(("stack", "owns"), [("dev", True), ("staging", False), ("prod", True), ("ci", False),
                                             ("local", False)])
def test_one_registry_per_account(rendered: dict[str, RenderResult], stack: str, owns: bool) -> None:
    repositories = rendered[stack].of_type("aws:ecr/repository:Repository")
    assert len(repositories) == (1 if owns else 0)
    if owns:
        repo = repositories[0].inputs
        assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"]
        assert repo["encryptionConfigurations"][0]["encryptionType"] == "KMS"
        assert "registry_url" in rendered[stack].outputs  # the repository URL (computed by AWS)


def test_deploys_pin_the_image_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlops/workloads"
    result = render("staging", workloads={"image": image, "imageDigest": digest})
    tracking = next(r for r in result.of_type("kubernetes:apps/v1:Deployment") if r.name == "tracking")
    spec = tracking.inputs["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {f"{image}@{digest}"}
    with pytest.raises(ConfigError, match="imageDigest"):
        render("staging", workloads={"imageDigest": "latest"})
