"""Security defaults everywhere: containers, service accounts, network policies, IAM."""

from __future__ import annotations

import json
import re

import pytest
from parliament import analyze_policy_string

from components.irsa import trust_policy
from components.render import RenderResult
from tests.infra.conftest import ALL_STACKS, AWS_STACKS
from tests.infra.helpers import iam_documents, manifest, manifests, pod_spec, trust_documents, workloads

# Read-only actions: Describe*, List*, Get*; everything else is a write for this check.
READ_ONLY = re.compile(r"^[a-z0-9-]+:(Describe|List|Get)[A-Za-z]*$")


def all_containers(result: RenderResult):
    for workload in workloads(result):
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield workload, spec, c


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_container_non_root_read_only_no_capabilities(rendered: dict[str, RenderResult], stack: str) -> None:
    seen = 0
    for workload, spec, c in all_containers(rendered[stack]):
        where = f"{stack} {workload['kind']}/{workload['metadata']['name']}/{c['name']}"
        ctx = c["securityContext"]
        assert ctx["runAsNonRoot"] is True and spec["securityContext"]["runAsNonRoot"] is True, where
        assert ctx["runAsUser"] > 0, where
        assert ctx["readOnlyRootFilesystem"] is True, where
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), where
        seen += 1
    assert seen >= 2  # at least the tracking server and one endpoint


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_container_has_requests_and_limits(rendered: dict[str, RenderResult], stack: str) -> None:
    for workload, _, c in all_containers(rendered[stack]):
        res = c["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res[kind]), f"{workload['metadata']['name']}/{c['name']} {kind}"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_read_only_root_gets_a_writable_tmp(rendered: dict[str, RenderResult], stack: str) -> None:
    for workload, spec, c in all_containers(rendered[stack]):
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{workload['metadata']['name']}/{c['name']} has no writable /tmp"
        volume = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
        assert "emptyDir" in volume


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_no_image_uses_latest_or_no_tag(rendered: dict[str, RenderResult], stack: str) -> None:
    for _, _, c in all_containers(rendered[stack]):
        image = c["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else None
        assert tag and tag != "latest", image


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_service_account_tokens_not_mounted(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    for workload in workloads(result):
        assert pod_spec(workload)["automountServiceAccountToken"] is False, workload["metadata"]["name"]
    for account in manifests(result, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_telemetry_off_in_mlflow_pods(rendered: dict[str, RenderResult], stack: str) -> None:
    for name in ("mlflow", "serve-churn"):
        env = {e["name"]: e.get("value") for e in pod_spec(manifest(rendered[stack], "Deployment", name))["containers"][0]["env"]}
        assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true"


# --- network policies -------------------------------------------------------------------

def policy(result: RenderResult, name: str) -> dict:
    return manifest(result, "NetworkPolicy", name)["spec"]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_default_deny_in_the_namespace(rendered: dict[str, RenderResult], stack: str) -> None:
    deny = manifest(rendered[stack], "NetworkPolicy", "default-deny")
    assert deny["metadata"]["namespace"] == f"mlops-{stack}"
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_dns_egress_allowed(rendered: dict[str, RenderResult], stack: str) -> None:
    rule = policy(rendered[stack], "allow-dns")["egress"][0]
    assert {p["port"] for p in rule["ports"]} == {53}
    assert rule["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_metadata_address_denied_in_every_egress_block(rendered: dict[str, RenderResult], stack: str) -> None:
    for netpol in manifests(rendered[stack], "NetworkPolicy"):
        for rule in netpol["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    assert "169.254.169.254/32" in peer["ipBlock"].get("except", []), netpol["metadata"]["name"]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_tracking_admits_only_its_clients(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    spec = policy(result, "tracking-ingress")
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "mlflow"
    peers = spec["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"mlops-platform/tracking-client": "true"}}} in peers
    assert all(p != {"podSelector": {}} for p in peers)
    # Serving pods carry the client label; the server's port is the only one opened.
    labels = pod_spec(manifest(result, "Deployment", "serve-churn"))
    assert labels is not None
    template_labels = manifest(result, "Deployment", "serve-churn")["spec"]["template"]["metadata"]["labels"]
    assert template_labels["mlops-platform/tracking-client"] == "true"
    assert spec["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 5000}]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_the_scraper_reaches_metrics_only_from_its_namespace(rendered: dict[str, RenderResult], stack: str) -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    for name, port in (("tracking-ingress", 9464), ("serving-ingress", 8080)):  # tracking: its metrics sidecar
        rule = policy(rendered[stack], name)["ingress"][-1]
        assert scraper in rule["from"], name
        assert all("namespaceSelector" not in p or p["namespaceSelector"]["matchLabels"] for p in rule["from"])
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]


@pytest.mark.parametrize("stack", ["ci", "local"])
def test_postgres_admits_only_the_tracking_server(rendered: dict[str, RenderResult], stack: str) -> None:
    spec = policy(rendered[stack], "postgres-ingress")
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "postgres"
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in spec["ingress"][0]["from"]] == ["mlflow"]
    assert spec["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 5432}]


# --- IAM --------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", AWS_STACKS)
def test_irsa_trust_binds_the_exact_service_account(rendered: dict[str, RenderResult], stack: str) -> None:
    web_identity = [(r, d) for r, d in trust_documents(rendered[stack])
                    if d["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity"]
    assert len(web_identity) >= 2
    for role, doc in web_identity:
        (statement,) = doc["Statement"]
        conditions = statement["Condition"]
        assert set(conditions) == {"StringEquals"}, role.name
        issuer = statement["Principal"]["Federated"].split(":oidc-provider/")[1]
        equals = conditions["StringEquals"]
        assert set(equals) == {f"{issuer}:sub", f"{issuer}:aud"}
        assert equals[f"{issuer}:aud"] == "sts.amazonaws.com"
        assert re.fullmatch(r"system:serviceaccount:[a-z0-9-]+:[a-z0-9-]+", equals[f"{issuer}:sub"]), role.name
        assert role.inputs["description"].endswith(equals[f"{issuer}:sub"].split(":", 2)[2].replace(":", "/"))


def test_trust_policy_shape() -> None:
    doc = json.loads(trust_policy("arn:aws:iam::1:oidc-provider/oidc.example/id/X", "https://oidc.example/id/X",
                                  "ns", "sa"))
    assert doc["Statement"][0]["Condition"]["StringEquals"] == {
        "oidc.example/id/X:sub": "system:serviceaccount:ns:sa", "oidc.example/id/X:aud": "sts.amazonaws.com"}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_iam_policies_pass_parliament(rendered: dict[str, RenderResult], stack: str) -> None:
    # Identity policies; trust policies have no Resource by design (their shape is asserted above).
    docs = iam_documents(rendered[stack])
    assert len(docs) >= 2
    for resource, doc in docs:
        findings = analyze_policy_string(json.dumps(doc), ignore_private_auditors=True).findings
        assert not findings, f"{resource.name}: {[(f.issue, f.detail) for f in findings]}"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_no_star_resource_with_write_actions(rendered: dict[str, RenderResult], stack: str) -> None:
    for resource, doc in iam_documents(rendered[stack]):
        for statement in doc["Statement"]:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if "*" in resources:
                writes = [a for a in actions if not READ_ONLY.match(a)]
                assert not writes, f"{resource.name}: {writes} on Resource '*'"
            assert not any(a.endswith(":*") or a == "*" for a in actions), f"{resource.name}: wildcard action"
