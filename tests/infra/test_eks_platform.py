"""What a real EKS cluster needs for the pods the stacks render (issue 13, items 1-3).

1. NetworkPolicies are enforced: the VPC CNI's network policy agent is on, and a stack attached to
   another's cluster checks that the owner enforces them.
2. Add-ons per pool kind: GPU pods find a device plugin on their pool, PersistentVolumeClaims a
   default StorageClass, HPAs the metrics-server; add-ons that call AWS use IRSA.
3. The Kubernetes version is in EKS standard support, from the dated table.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from components import eks_versions
from components.addons import AFTER_NODES, BEFORE_NODES, CNI_POLICY_ARN
from components.cluster_services import STORAGE_CLASS
from components.config import ConfigError, parse_environment
from components.render import DEFAULT_STACK_REFERENCE_OUTPUTS, RenderResult, render_stack
from components.stack_file import load_stack_config, stack_file
from tests.infra.conftest import ADMIN_PASSWORD
from tests.infra.helpers import manifests, pod_spec, workloads

CREATE = ["dev", "staging", "prod"]
ADDON = "aws:eks/addon:Addon"
RELEASE = "kubernetes:helm.sh/v3:Release"


def addons(result: RenderResult) -> dict[str, Any]:
    return {a.inputs["addonName"]: a for a in result.of_type(ADDON)}


def render(stack: str, **sections: Any) -> RenderResult:
    config = load_stack_config(stack_file(stack))
    for key, value in sections.items():
        config[f"mlops-platform:{key}"] = value
    return render_stack(stack, config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})


# --- 1. network policies enforced -----------------------------------------------------------

@pytest.mark.parametrize("stack", CREATE)
def test_vpc_cni_enforces_network_policies(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert result.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    cni = addons(result)["vpc-cni"]
    assert json.loads(cni.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert result.outputs["network_policy_enforcement"] == "vpc-cni"


@pytest.mark.parametrize("stack", CREATE)
def test_the_cni_uses_irsa_not_the_node_role(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    role_arn = addons(result)["vpc-cni"].inputs["serviceAccountRoleArn"]
    role = next(r for r in result.of_type("aws:iam/role:Role") if role_arn.endswith(f"/{r.name}"))
    assert "system:serviceaccount:kube-system:aws-node" in role.inputs["assumeRolePolicy"]
    attached = [a.inputs["policyArn"] for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")]
    assert CNI_POLICY_ARN in attached
    nodes = result.one("aws:iam/role:Role", "cluster-nodes")
    assert CNI_POLICY_ARN not in nodes.inputs["managedPolicyArns"]


@pytest.mark.parametrize("stack", CREATE)
def test_nodes_join_after_the_network_add_ons_and_the_rest_after_nodes(rendered: dict[str, RenderResult],
                                                                        stack: str) -> None:
    result = rendered[stack]
    by_name = addons(result)
    groups = result.of_type("aws:eks/nodeGroup:NodeGroup")
    for group in groups:
        assert {by_name[a].urn for a in BEFORE_NODES} <= set(group.depends_on)
    for name in AFTER_NODES:
        assert {g.urn for g in groups} <= set(by_name[name].depends_on)


def test_an_attached_stack_requires_the_owner_to_enforce_network_policies() -> None:
    ok = render_stack("ci", secrets={"trackingAdminPassword": ADMIN_PASSWORD}, stack_reference_outputs={
        **DEFAULT_STACK_REFERENCE_OUTPUTS, "network_policy_enforcement": "vpc-cni"})
    assert ok.outputs["network_policy_enforcement"] == "vpc-cni"
    with pytest.raises(Exception, match="exports network_policy_enforcement 'none'"):
        render_stack("ci", secrets={"trackingAdminPassword": ADMIN_PASSWORD}, stack_reference_outputs={
            **DEFAULT_STACK_REFERENCE_OUTPUTS, "network_policy_enforcement": "none"})


# --- 2. what each pool's pods request, the cluster provides ---------------------------------------

def _requests_gpu(pod: dict[str, Any]) -> bool:
    return any("nvidia.com/gpu" in (c.get("resources") or {}).get("limits", {}) for c in pod["containers"])


@pytest.mark.parametrize("stack", CREATE)
def test_gpu_pools_get_the_device_plugin_on_their_nodes(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    plugin = next(r for r in result.of_type(RELEASE) if r.inputs["chart"] == "nvidia-device-plugin")
    values = plugin.inputs["values"]
    for group in result.of_type("aws:eks/nodeGroup:NodeGroup"):
        if group.inputs["amiType"] != "AL2023_x86_64_NVIDIA":
            continue
        labels = group.inputs["labels"]
        assert all(labels.get(k) == v for k, v in values["nodeSelector"].items()), group.name
        for taint in group.inputs["taints"]:
            assert any(t["key"] == taint["key"] and t["operator"] == "Exists" for t in values["tolerations"])


def test_no_device_plugin_without_a_gpu_pool() -> None:
    result = render("dev", cluster={"mode": "create", "version": "1.35", "trainingPools": [
        {"name": "cpu", "instanceTypes": ["c6i.2xlarge"], "maxSize": 2}]})
    charts = {r.inputs["chart"] for r in result.of_type(RELEASE)}
    assert "cluster-autoscaler" in charts and not any("nvidia" in c or "dcgm" in c for c in charts), charts


def test_a_gpu_job_lands_on_a_pool_with_the_device_plugin() -> None:
    config = load_stack_config(stack_file("dev"))
    workloads_cfg = dict(config["mlops-platform:workloads"])
    workloads_cfg["training"] = [*workloads_cfg["training"],
                                 {"name": "vision", "spec": "/app/specs/churn.yaml", "pool": "gpu", "gpus": 1}]
    result = render("dev", workloads=workloads_cfg)
    gpu_pods = [pod_spec(w) for w in workloads(result) if _requests_gpu(pod_spec(w))]
    assert gpu_pods, "the GPU job renders a pod that requests nvidia.com/gpu"
    plugin = next(r for r in result.of_type(RELEASE) if r.inputs["chart"] == "nvidia-device-plugin")
    for pod in gpu_pods:
        selector = pod.get("nodeSelector") or {}
        pool = next(g for g in result.of_type("aws:eks/nodeGroup:NodeGroup")
                    if all(g.inputs["labels"].get(k) == v for k, v in selector.items()))
        assert pool.inputs["amiType"] == "AL2023_x86_64_NVIDIA"
        assert all(pool.inputs["labels"].get(k) == v for k, v in plugin.inputs["values"]["nodeSelector"].items())


def _claims(result: RenderResult) -> list[dict[str, Any]]:
    return [t for m in manifests(result, "StatefulSet") for t in m["spec"].get("volumeClaimTemplates", [])]


@pytest.mark.parametrize("stack", CREATE)
def test_a_default_encrypted_storage_class_backed_by_the_ebs_driver(rendered: dict[str, RenderResult],
                                                                    stack: str) -> None:
    result = rendered[stack]
    (klass,) = manifests(result, "StorageClass")
    assert klass["metadata"]["name"] == STORAGE_CLASS
    assert klass["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert klass["provisioner"] == "ebs.csi.aws.com" and klass["parameters"]["encrypted"] == "true"
    assert klass["volumeBindingMode"] == "WaitForFirstConsumer"
    assert addons(result)["aws-ebs-csi-driver"].inputs["serviceAccountRoleArn"].startswith("arn:aws:iam::")


def test_claims_without_a_class_in_ci_bind_to_the_owner_clusters_default(rendered: dict[str, RenderResult]) -> None:
    claims = _claims(rendered["ci"])
    assert claims and all("storageClassName" not in c["spec"] for c in claims)  # the cluster's default
    owner = rendered["dev"]  # cluster.stackReference of the ci stack
    assert [m["metadata"]["name"] for m in manifests(owner, "StorageClass")] == [STORAGE_CLASS]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci"])
def test_autoscaled_endpoints_have_a_metrics_server(rendered: dict[str, RenderResult], stack: str) -> None:
    assert manifests(rendered[stack], "HorizontalPodAutoscaler")
    owner = rendered["dev" if stack == "ci" else stack]
    assert "metrics-server" in addons(owner)


# --- 3. a supported Kubernetes version --------------------------------------------------------

@pytest.mark.parametrize("stack", CREATE)
def test_clusters_run_a_version_in_standard_support(rendered: dict[str, RenderResult], stack: str) -> None:
    eks = rendered[stack].one("aws:eks/cluster:Cluster")
    assert eks.inputs["version"] == "1.35" and eks.inputs["upgradePolicy"] == {"supportType": "STANDARD"}
    assert eks_versions.support_problem(eks.inputs["version"], date.today()) is None
    release = next(r for r in rendered[stack].of_type(RELEASE) if r.inputs["chart"] == "cluster-autoscaler")
    assert release.inputs["values"]["image"]["tag"].startswith("v1.35.")


@pytest.mark.parametrize(("version", "message"), [
    ("1.34", 'cluster.version: "1.34" left EKS standard support on 2026-12-02; use 1.35 (standard support until '
             "2027-03-27)"),
    ("1.31", 'cluster.version: "1.31" left EKS standard support on 2025-11-26'),
    ("1.36", 'cluster.version: "1.36" has no support dates in components/eks_versions.py'),
])
def test_config_refuses_versions_past_standard_support(version: str, message: str) -> None:
    raw = {"name": "dev", "kind": "dev", "tags": {"owner": "a", "costCenter": "b"}, "cluster": {"version": version}}
    with pytest.raises(ConfigError) as error:
        parse_environment(raw)
    assert f"mlops-platform:{message}" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("version", "on", "allowed"), [
    ("1.35", date(2026, 12, 3), True), ("1.35", date(2027, 3, 27), True), ("1.35", date(2027, 3, 28), False),
    ("1.34", date(2026, 12, 2), False),  # in support, but no cluster-autoscaler release recorded for it
    ("1.34", date(2026, 12, 3), False), ("1.33", date(2026, 7, 29), False),
])
def test_support_dates_from_the_table(version: str, on: date, allowed: bool) -> None:
    assert (eks_versions.support_problem(version, on) is None) is allowed


def test_the_table_is_dated_and_the_default_is_supported_on_its_date() -> None:
    assert eks_versions.support_problem(eks_versions.DEFAULT_VERSION, eks_versions.TABLE_AS_OF) is None
    assert eks_versions.in_standard_support(eks_versions.TABLE_AS_OF) == ["1.35"]


def test_autoscaler_minor_must_match_the_cluster() -> None:
    raw = {"name": "dev", "kind": "dev", "tags": {"owner": "a", "costCenter": "b"},
           "cluster": {"version": "1.35", "autoscalerVersion": "v1.31.0"}}
    with pytest.raises(ConfigError, match="autoscalerVersion: 'v1.31.0' must have the cluster's minor"):
        parse_environment(raw)

