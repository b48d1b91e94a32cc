"""Training cluster: EKS in `create` mode, attach-only in `existing` mode, one Kubernetes provider."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from components.addons import ADDONS
from components.cluster import TRAINING_TAINT_KEY
from components.render import DEFAULT_STACK_REFERENCE_OUTPUTS, RenderResult, render_stack
from components.stack_file import load_stack_config, stack_file
from tests.infra.conftest import ADMIN_PASSWORD
from workloads.cli import app

CREATE = ["dev", "staging", "prod"]
EKS = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"


def eks(result: RenderResult):
    return result.one(EKS)


def release_of(result: RenderResult, chart: str):
    (release,) = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == chart]
    return release


def render_with(stack: str, **sections) -> RenderResult:
    """A stack file with some `mlops-platform:` sections replaced."""
    config = load_stack_config(stack_file(stack))
    for key, value in sections.items():
        config[f"mlops-platform:{key}"] = {**config.get(f"mlops-platform:{key}", {}), **value}
    return render_stack(stack, config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})


def training_groups(result: RenderResult):
    return [g for g in result.of_type(NODE_GROUP) if g.name != "cluster-system"]


@pytest.mark.parametrize("stack", CREATE)
def test_eks_authentication_mode_is_api(rendered: dict[str, RenderResult], stack: str) -> None:
    assert eks(rendered[stack]).inputs["accessConfig"]["authenticationMode"] == "API"


@pytest.mark.parametrize("stack", CREATE)
def test_eks_secrets_envelope_encrypted_with_a_rotating_kms_key(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    config = eks(result).inputs["encryptionConfig"]
    assert config["resources"] == ["secrets"]
    key = result.one("aws:kms/key:Key", "cluster-secrets-key")
    assert config["provider"]["keyArn"].endswith("/cluster-secrets-key")
    assert key.inputs["enableKeyRotation"] is True


@pytest.mark.parametrize("stack", CREATE)
def test_eks_control_plane_logging(rendered: dict[str, RenderResult], stack: str) -> None:
    assert set(eks(rendered[stack]).inputs["enabledClusterLogTypes"]) == {
        "api", "audit", "authenticator", "controllerManager", "scheduler"}


@pytest.mark.parametrize("stack", CREATE)
def test_eks_private_endpoint_everywhere(rendered: dict[str, RenderResult], stack: str) -> None:
    # The Kubernetes layer is applied from the in-VPC runner (README "Deploy"): no stack opens the API.
    vpc = eks(rendered[stack]).inputs["vpcConfig"]
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["endpointPublicAccess"] is False
    assert not vpc.get("publicAccessCidrs")


def test_public_endpoint_only_for_listed_cidrs() -> None:
    result = render_with("dev", cluster={"publicAccessCidrs": ["198.51.100.0/24"]})
    vpc = eks(result).inputs["vpcConfig"]
    assert vpc["endpointPublicAccess"] is True and vpc["publicAccessCidrs"] == ["198.51.100.0/24"]


def test_prod_has_no_public_endpoint(rendered: dict[str, RenderResult]) -> None:
    assert eks(rendered["prod"]).inputs["vpcConfig"]["endpointPublicAccess"] is False


@pytest.mark.parametrize("stack", CREATE)
def test_oidc_provider_for_irsa(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    provider = result.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider")
    assert provider.inputs["clientIdLists"] == ["sts.amazonaws.com"]
    assert provider.inputs["url"].startswith("https://oidc.eks.")
    assert result.outputs["oidc_provider_arn"].startswith("arn:aws:iam::")
    assert not result.outputs["oidc_provider_url"].startswith("https://")


@pytest.mark.parametrize("stack", CREATE)
def test_core_addons(rendered: dict[str, RenderResult], stack: str) -> None:
    addons = {a.inputs["addonName"]: a for a in rendered[stack].of_type("aws:eks/addon:Addon")}
    assert set(addons) == set(ADDONS) >= {"vpc-cni", "coredns", "kube-proxy"}
    assert all(a.inputs["addonVersion"] for a in addons.values())
    assert addons["aws-ebs-csi-driver"].inputs["serviceAccountRoleArn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("stack", CREATE)
def test_system_node_group_on_demand(rendered: dict[str, RenderResult], stack: str) -> None:
    system = rendered[stack].one(NODE_GROUP, "cluster-system")
    assert system.inputs["capacityType"] == "ON_DEMAND"
    assert system.inputs["scalingConfig"]["minSize"] >= 1
    assert system.inputs["taints"] == []


@pytest.mark.parametrize("stack", CREATE)
def test_training_pools_scale_from_zero(rendered: dict[str, RenderResult], stack: str) -> None:
    groups = training_groups(rendered[stack])
    assert {g.name for g in groups} == {"cluster-cpu", "cluster-gpu"}
    for group in groups:
        assert group.inputs["scalingConfig"]["minSize"] == 0
        assert group.inputs["scalingConfig"]["desiredSize"] == 0


@pytest.mark.parametrize(("stack", "spot"), [("dev", {"cpu": True, "gpu": True}), ("prod", {"cpu": True, "gpu": False})])
def test_spot_capacity_from_config(rendered: dict[str, RenderResult], stack: str, spot: dict[str, bool]) -> None:
    for group in training_groups(rendered[stack]):
        pool = group.name.removeprefix("cluster-")
        assert group.inputs["capacityType"] == ("SPOT" if spot[pool] else "ON_DEMAND")


@pytest.mark.parametrize("stack", CREATE)
def test_gpu_pool_uses_nvidia_ami_and_training_pools_are_tainted(rendered: dict[str, RenderResult], stack: str) -> None:
    for group in training_groups(rendered[stack]):
        pool = group.name.removeprefix("cluster-")
        expected_ami = "AL2023_x86_64_NVIDIA" if pool == "gpu" else "AL2023_x86_64_STANDARD"
        assert group.inputs["amiType"] == expected_ami
        assert group.inputs["taints"] == [{"key": TRAINING_TAINT_KEY, "value": pool, "effect": "NO_SCHEDULE"}]
        assert group.inputs["labels"]["mlops-platform/pool"] == pool


@pytest.mark.parametrize("stack", CREATE)
def test_autoscaler_node_template_tags(rendered: dict[str, RenderResult], stack: str) -> None:
    for group in training_groups(rendered[stack]):
        pool = group.name.removeprefix("cluster-")
        tags = group.inputs["tags"]
        assert tags["k8s.io/cluster-autoscaler/enabled"] == "true"
        assert tags[f"k8s.io/cluster-autoscaler/mlops-{stack}"] == "owned"
        for key, value in group.inputs["labels"].items():
            assert tags[f"k8s.io/cluster-autoscaler/node-template/label/{key}"] == value
        assert tags[f"k8s.io/cluster-autoscaler/node-template/taint/{TRAINING_TAINT_KEY}"] == f"{pool}:NoSchedule"
        if pool == "gpu":
            assert tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] == "1"


@pytest.mark.parametrize("stack", CREATE)
def test_nodes_require_imdsv2_with_hop_limit_one(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    templates = {t.urn.rsplit("::", 1)[1]: t for t in result.of_type("aws:ec2/launchTemplate:LaunchTemplate")}
    for group in result.of_type(NODE_GROUP):
        template = templates[group.name]
        assert group.inputs["launchTemplate"]["id"] == f"{group.name}-id"
        metadata = template.inputs["metadataOptions"]
        assert metadata["httpTokens"] == "required"
        assert metadata["httpPutResponseHopLimit"] == 1
        assert template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


@pytest.mark.parametrize("stack", CREATE)
def test_cluster_autoscaler_installed_with_its_irsa_role(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    release = release_of(result, "cluster-autoscaler")
    assert release.inputs["version"] == "9.54.0" and release.inputs["values"]["image"]["tag"] == "v1.35.0"
    values = release.inputs["values"]
    assert values["autoDiscovery"]["clusterName"] == f"mlops-{stack}"
    annotations = values["rbac"]["serviceAccount"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].endswith("/cluster-autoscaler")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci"])
def test_kubeconfig_is_a_secret_output(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert "kubeconfig" in result.secret_outputs
    config = json.loads(result.outputs["kubeconfig"])
    assert config["kind"] == "Config"


def test_created_kubeconfig_uses_cluster_outputs(rendered: dict[str, RenderResult]) -> None:
    config = json.loads(rendered["prod"].outputs["kubeconfig"])
    assert config["clusters"][0]["cluster"]["server"].startswith("https://")
    assert config["users"][0]["user"]["exec"]["args"][:4] == ["eks", "get-token", "--cluster-name", "mlops-prod"]


def test_ci_existing_mode_creates_nothing_cluster_wide(rendered: dict[str, RenderResult]) -> None:
    types = rendered["ci"].types()
    for forbidden in ("aws:ec2/vpc:Vpc", EKS, NODE_GROUP, "aws:rds/instance:Instance", "aws:eks/addon:Addon",
                      "aws:iam/openIdConnectProvider:OpenIdConnectProvider", "kubernetes:helm.sh/v3:Release"):
        assert forbidden not in types, f"ci created {forbidden}"


def test_ci_attaches_to_the_referenced_cluster(rendered: dict[str, RenderResult]) -> None:
    outputs = rendered["ci"].outputs
    assert outputs["cluster_name"] == DEFAULT_STACK_REFERENCE_OUTPUTS["cluster_name"]
    assert outputs["namespace"] == "mlops-ci"
    # IRSA roles trust the referenced cluster's OIDC provider.
    roles = rendered["ci"].of_type("aws:iam/role:Role")
    assert roles and all(DEFAULT_STACK_REFERENCE_OUTPUTS["oidc_provider_arn"] in r.inputs["assumeRolePolicy"]
                         for r in roles)


def test_stack_reference_outputs_match_what_a_create_stack_exports(rendered: dict[str, RenderResult]) -> None:
    exported = rendered["dev"].outputs
    missing = set(DEFAULT_STACK_REFERENCE_OUTPUTS) - set(exported)
    assert not missing, f"a create stack does not export {missing}"
    pools = exported["training_pools"]
    assert {p["name"] for p in pools} == {"cpu", "gpu"}


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci", "local"])
def test_every_kubernetes_resource_uses_an_explicit_provider(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    k8s_providers = {r.urn for r in result.of_type("pulumi:providers:kubernetes")}
    objects = [r for r in result.resources if r.custom and r.type.startswith("kubernetes:")]
    assert objects
    for r in objects:
        assert r.provider and r.provider.split("::")[0] in {p for p in k8s_providers} | {
            p.split("::")[0] for p in k8s_providers}, f"{r.name} uses the default provider"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci", "local"])
def test_namespace_with_quota_and_limits(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert result.one("kubernetes:core/v1:Namespace").inputs["metadata"]["name"] == f"mlops-{stack}"
    assert result.one("kubernetes:core/v1:ResourceQuota")
    assert result.one("kubernetes:core/v1:LimitRange")


def test_prod_plan_shows_the_full_tree() -> None:
    outcome = CliRunner().invoke(app, ["plan", "prod", "--json"])
    assert outcome.exit_code == 0, outcome.output
    types = {r["type"] for r in json.loads(outcome.output)["resources"]}
    for expected in ("mlops:network:Network", "mlops:cluster:Cluster", "mlops:storage:Storage",
                     "mlops:database:Database", "mlops:tracking:TrackingServer", "mlops:serving:Serving",
                     "mlops:netpol:NetworkPolicies", EKS, NODE_GROUP, "aws:rds/instance:Instance",
                     "kubernetes:apps/v1:Deployment", "kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        assert expected in types, f"prod plan lacks {expected}"
    tree = CliRunner().invoke(app, ["plan", "prod"])
    assert tree.exit_code == 0
    for name in ("cluster-eks", "database-postgres", "tracking", "serving-churn"):
        assert name in tree.output


def test_local_stack_uses_no_aws_at_all(rendered: dict[str, RenderResult]) -> None:
    result = rendered["local"]
    assert not [r.type for r in result.resources if r.type.startswith(("aws:", "pulumi:providers:aws"))]
    provider = result.one("pulumi:providers:kubernetes")
    assert provider.inputs["context"] == "kind-kind"


def test_one_region_key_for_the_provider_and_the_program() -> None:
    config = load_stack_config(stack_file("dev"))
    config["aws:region"] = "eu-west-1"
    result = render_stack("dev", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    assert result.one("pulumi:providers:aws").inputs["region"] == "eu-west-1"
    kubeconfig = json.loads(result.outputs["kubeconfig"])
    assert kubeconfig["users"][0]["user"]["exec"]["args"][-2:] == ["--region", "eu-west-1"]
    config["mlops-platform:region"] = "eu-west-1"
    with pytest.raises(Exception, match="mlops-platform:region: 'eu-west-1' is not a key; set the region once"):
        render_stack("dev", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
