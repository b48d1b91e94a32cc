"""Monitoring runs push their figures: MLOPS_PUSHGATEWAY_URL on every monitoring CronJob, as rendered.

The expected URL is not taken from components/observability.py: it is built from what the stack
renders or its config names, the Pushgateway Helm release (its Service is named by `fullnameOverride`, in the
release's namespace, on the chart's default `service.port` 9091, which we do not override), so a renamed
release, namespace or port breaks this instead of the pushes. Then: the monitor pods may reach it through the
rendered NetworkPolicies, and the monitoring alert rules ship exactly where runs push.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from components.jobs import monitor_container
from components.render import RenderResult, load_stack_config, render_stack, stack_file
from tests.infra.conftest import ADMIN_PASSWORD, ALL_STACKS
from tests.infra.helpers import env_of, manifests, pod_spec

VARIABLE = "MLOPS_PUSHGATEWAY_URL"  # what workloads/monitoring/export.py reads (checked below)
CHART_SERVICE_PORT = 9091  # prometheus-community/prometheus-pushgateway values.yaml `service.port`
INSTALLING = ["dev", "staging", "prod"]
# An in-cluster address (the pushgateway pod's, after the Service's DNAT): the VPC's private range.
POD_ADDRESS = ipaddress.ip_address("10.0.37.5")


def monitors(result: RenderResult) -> list[dict[str, Any]]:
    found = [m for m in manifests(result, "CronJob")
             if m["metadata"]["labels"].get("app.kubernetes.io/component") == "monitoring"]
    assert found, f"{result.stack}: no monitoring CronJob"
    return found


def monitor_env(cronjob: dict[str, Any]) -> dict[str, Any]:
    [container] = pod_spec(cronjob)["containers"]
    return env_of(container)


def installed_pushgateway_url(result: RenderResult) -> str:
    """The in-cluster URL of the Service the rendered Pushgateway release creates."""
    [release] = [r for r in result.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "prometheus-pushgateway"]
    values = release.inputs["values"]
    assert "service" not in values, "the port below is the chart's default; an override must be read here"
    return f"http://{values['fullnameOverride']}.{release.inputs['namespace']}.svc.cluster.local:{CHART_SERVICE_PORT}"


def rule_alerts(result: RenderResult) -> set[str]:
    import yaml

    groups: list[dict[str, Any]] = []
    for m in manifests(result):
        if m["kind"] == "PrometheusRule":
            groups += m["spec"]["groups"]
        elif m["kind"] == "ConfigMap" and m["metadata"]["name"] == "mlops-alert-rules":
            groups += yaml.safe_load(m["data"]["mlops-alerts.rules.yaml"])["groups"]
    return {r["alert"] for g in groups for r in g["rules"]}


def test_the_variable_is_the_one_the_monitor_reads() -> None:
    from workloads.monitoring import export

    assert export.PUSHGATEWAY_ENV == VARIABLE


@pytest.mark.parametrize("stack", INSTALLING)
def test_installing_stacks_point_every_monitor_at_their_pushgateway(rendered: dict[str, RenderResult],
                                                                     stack: str) -> None:
    result = rendered[stack]
    url = installed_pushgateway_url(result)
    assert url == "http://pushgateway.monitoring.svc.cluster.local:9091"
    for cronjob in monitors(result):
        assert monitor_env(cronjob)[VARIABLE] == url, cronjob["metadata"]["name"]


def test_ci_pushes_to_the_pushgateway_dev_installs(rendered: dict[str, RenderResult]) -> None:
    """ci installs nothing (dev's cluster); its runs push to dev's Pushgateway, named in its config."""
    ci = rendered["ci"]
    assert not ci.of_type("kubernetes:helm.sh/v3:Release")
    for cronjob in monitors(ci):
        assert monitor_env(cronjob)[VARIABLE] == installed_pushgateway_url(rendered["dev"])


def test_without_a_pushgateway_no_monitor_gets_the_variable(rendered: dict[str, RenderResult]) -> None:
    local = rendered["local"]
    assert "pushgatewayUrl" not in load_stack_config(stack_file("local")).get("mlops-platform:observability", {})
    for cronjob in monitors(local):
        assert VARIABLE not in monitor_env(cronjob), cronjob["metadata"]["name"]
    assert not any(VARIABLE in env_of(c) for w in manifests(local) if w["kind"] in ("Deployment", "CronJob")
                   for c in pod_spec(w)["containers"])


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_monitoring_alerts_ship_exactly_where_runs_push(rendered: dict[str, RenderResult], stack: str) -> None:
    """Without pushes, 'never reported' would fire forever; failed runs still alert as failed Jobs."""
    result = rendered[stack]
    pushes = all(VARIABLE in monitor_env(c) for c in monitors(result))
    monitoring_alerts = {"MlopsMonitoringNotRun", "MlopsMonitoringNeverReported"} & rule_alerts(result)
    assert monitoring_alerts == ({"MlopsMonitoringNotRun", "MlopsMonitoringNeverReported"} if pushes else set())
    alerts = rule_alerts(result)
    assert {"MlopsJobFailed", "MlopsCronJobFailed"} <= alerts
    assert pushes == (stack != "local")


def test_every_monitor_of_several_endpoints_without_retraining() -> None:
    """Two endpoints, no retraining Job (the monitor container without the retrain mounts)."""
    config = load_stack_config(stack_file("dev"))
    endpoint = config["mlops-platform:serving"]["endpoints"][0]
    config["mlops-platform:serving"]["endpoints"] = [endpoint, {**endpoint, "name": "churn-b"}]
    config["mlops-platform:workloads"]["monitoring"].pop("retrainJob")
    result = render_stack("dev", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD}, stack_name="dev")
    found = monitors(result)
    assert sorted(m["metadata"]["name"] for m in found) == ["monitor-churn", "monitor-churn-b"]
    for cronjob in found:
        env = monitor_env(cronjob)
        assert env[VARIABLE] == installed_pushgateway_url(result) and "MLOPS_RETRAIN_JOBS_DIR" not in env


def test_the_container_carries_the_variable_only_when_given() -> None:
    for retrain in (False, True):
        with_url = monitor_container(["--endpoint", "x"], retrain=retrain, pushgateway="http://pg.obs.svc:9091")
        assert {"name": VARIABLE, "value": "http://pg.obs.svc:9091"} in with_url.env
        assert VARIABLE not in {e["name"] for e in monitor_container([], retrain=retrain, pushgateway=None).env}


# --- the monitor pods may reach it -------------------------------------------------------------------


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels"}, "matchExpressions: extend this check"
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_admits_address(peer: dict[str, Any], address: ipaddress.IPv4Address) -> bool:
    block = peer.get("ipBlock")
    if block is None:
        return False  # selector peers: none of ours names the monitoring namespace's pods
    return address in ipaddress.ip_network(block["cidr"]) and \
        not any(address in ipaddress.ip_network(e) for e in block.get("except", []))


def port_admitted(rule: dict[str, Any], port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("protocol", "TCP") == "TCP" and p.get("port") in (port, None) for p in ports)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_monitor_pods_may_reach_the_pushgateway(rendered: dict[str, RenderResult], stack: str) -> None:
    """Default-deny egress is rendered: some policy selecting the monitor pods admits TCP 9091 to a pod address."""
    result = rendered[stack]
    policies = manifests(result, "NetworkPolicy")
    assert any(p["metadata"]["name"] == "default-deny" and "Egress" in p["spec"]["policyTypes"] for p in policies)
    for cronjob in monitors(result):
        labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        admitted = [p["metadata"]["name"] for p in policies
                    if selects(p, labels) and "Egress" in p["spec"]["policyTypes"]
                    for rule in p["spec"].get("egress", [])
                    if port_admitted(rule, CHART_SERVICE_PORT)
                    and any(peer_admits_address(peer, POD_ADDRESS) for peer in rule.get("to", []))]
        assert admitted, f"{stack}: no egress from {cronjob['metadata']['name']} to the Pushgateway"
        # ...and never the node's metadata address through the same rules.
        assert not any(peer_admits_address(peer, ipaddress.ip_address("169.254.169.254"))
                       for p in policies if selects(p, labels)
                       for rule in p["spec"].get("egress", []) for peer in rule.get("to", []))
