"""Observability: what scrapes the environment, the dashboards and alert rules it ships, and the stack.

Config `observability` (components/observability_config.py):
- `enabled: true` installs kube-prometheus-stack in `observability.namespace` from its official Helm
  chart (pinned), with Grafana's sidecar picking up dashboards by label in every namespace,
  kube-state-metrics exporting the node-pool label, a Pushgateway for monitoring runs (they are
  batch jobs: nothing to scrape when Prometheus comes by) and, on clusters with GPU pools, NVIDIA's
  DCGM exporter. Only a stack that owns its cluster may install it.
- Otherwise an existing stack is targeted by the labels in config.
- `operator` (default: `enabled`): ServiceMonitors for the endpoints and the tracking server and a
  PrometheusRule with the alert rules (components/alert_rules.py). Without the operator, the rules
  are a ConfigMap (`mlops-alert-rules`, a Prometheus rules file) and serving pods carry prometheus.io
  annotations (`serving_pod_annotations`, applied by components/serving.py).
- Always: one ConfigMap per Grafana dashboard (components/dashboards/*.json), labelled for the sidecar,
  with the environment's namespace fixed in the dashboard, its uid and title made per environment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from components.alert_rules import rule_groups
from components.config import EnvironmentConfig
from components.observability_config import STACK_RELEASE
from components.tracking import CREDENTIALS_SECRET as TRACKING_CREDENTIALS
from components.tracking import LABELS as TRACKING_SELECTOR
from components.tracking import METRICS_CONTAINER as TRACKING_METRICS_PORT

DASHBOARD_DIR = Path(__file__).parent / "dashboards"
# Dashboards every environment gets; node pools only where the environment owns the cluster.
CLUSTER_DASHBOARDS = ("node-pools",)
FOLDER_ANNOTATION = "grafana_folder"
FOLDER = "MLOps"
PUSHGATEWAY = "pushgateway"
PUSHGATEWAY_PORT = 9091
METRICS_PATH = "/metrics"
SCRAPE_PORT_NAME = "http"  # the serving Services' port name (components/serving.py)
GRAFANA_UID_MAX = 40
PART_OF = {"app.kubernetes.io/part-of": "mlops-platform"}
MONITORING_API = "monitoring.coreos.com/v1"
# The endpoints' Services (components/serving.py labels them; serving imports this module, so no import back).
SERVING_SELECTOR = {"app.kubernetes.io/component": "serving", **PART_OF}


@dataclass(frozen=True)
class ObservabilityArgs:
    env: EnvironmentConfig
    namespace: pulumi.Input[str]


def serving_pod_annotations(env: EnvironmentConfig, port: int) -> dict[str, str]:
    """prometheus.io annotations for the serving pod template when no Prometheus Operator is there."""
    if env.observability.uses_operator:
        return {}  # ServiceMonitors scrape; annotations too would make annotation-based configs scrape twice
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": METRICS_PATH}


def scraper_peer(env: EnvironmentConfig) -> dict[str, Any]:
    """The NetworkPolicy `from` peer for the scraping Prometheus (components/netpol.py admits it)."""
    cfg = env.observability
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cfg.namespace}},
            "podSelector": {"matchLabels": dict(cfg.scraper_pod_labels)}}


def pushgateway_url(env: EnvironmentConfig) -> str | None:
    """Where monitoring runs push (MLOPS_PUSHGATEWAY_URL); None: they only log to MLflow."""
    cfg = env.observability
    if cfg.pushgateway_url:
        return cfg.pushgateway_url
    if cfg.enabled:
        return f"http://{PUSHGATEWAY}.{cfg.namespace}.svc.cluster.local:{PUSHGATEWAY_PORT}"
    return None


def dashboard_sources() -> dict[str, dict[str, Any]]:
    """components/dashboards/<stem>.json, by stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_uid(base: str, env_name: str) -> str:
    uid = f"{base}-{env_name}"
    if len(uid) <= GRAFANA_UID_MAX:
        return uid
    return f"{base[:GRAFANA_UID_MAX - 11]}-{hashlib.sha256(env_name.encode()).hexdigest()[:10]}"


def environment_dashboard(env: EnvironmentConfig, source: dict[str, Any]) -> dict[str, Any]:
    """The dashboard as this environment ships it: its own uid and title, its namespace fixed (hidden)."""
    dashboard = json.loads(json.dumps(source))
    dashboard["uid"] = dashboard_uid(source["uid"], env.name)
    dashboard["title"] = f"{source['title']} ({env.name})"
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["name"] == "namespace":
            variable.clear()
            variable.update({"name": "namespace", "type": "constant", "hide": 2, "query": env.namespace,
                             "current": {"text": env.namespace, "value": env.namespace}})
    return dashboard


def environment_dashboards(env: EnvironmentConfig) -> dict[str, dict[str, Any]]:
    owns_cluster = env.cluster.mode != "existing"
    return {stem: environment_dashboard(env, source) for stem, source in dashboard_sources().items()
            if owns_cluster or stem not in CLUSTER_DASHBOARDS}


class Observability(pulumi.ComponentResource):
    pushgateway_url: str | None

    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:observability:Observability", name, None, opts)
        env, cfg = args.env, args.env.observability
        stack = self._stack(name, env) if cfg.enabled else []
        # Custom resources need the operator's CRDs, which the stack's release brings.
        after_stack = pulumi.ResourceOptions(parent=self, depends_on=stack)
        labels = {**PART_OF, **cfg.selector_labels}
        groups = rule_groups(env, runs_push=pushgateway_url(env) is not None)
        if cfg.uses_operator:
            self._service_monitors(name, env, args.namespace, labels, after_stack)
            k8s.apiextensions.CustomResource(
                f"{name}-rules", api_version=MONITORING_API, kind="PrometheusRule",
                metadata={"name": "mlops-alerts", "namespace": args.namespace, "labels": labels},
                spec={"groups": groups}, opts=after_stack)
        else:
            # No operator: a rules file an existing Prometheus loads (`rule_files`).
            k8s.core.v1.ConfigMap(
                f"{name}-rules",
                metadata={"name": "mlops-alert-rules", "namespace": args.namespace, "labels": PART_OF},
                data={"mlops-alerts.rules.yaml": yaml.safe_dump({"groups": groups}, sort_keys=False)},
                opts=pulumi.ResourceOptions(parent=self))
        for stem, dashboard in environment_dashboards(env).items():
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{stem}",
                metadata={"name": f"dashboard-{stem}", "namespace": args.namespace,
                          "labels": {**PART_OF, **cfg.dashboard_labels},
                          "annotations": {FOLDER_ANNOTATION: FOLDER}},
                data={f"{stem}.json": json.dumps(dashboard, indent=1, sort_keys=True)},
                opts=pulumi.ResourceOptions(parent=self))
        self.pushgateway_url = pushgateway_url(env)
        self.register_outputs({"pushgateway_url": self.pushgateway_url})

    def _service_monitors(self, name: str, env: EnvironmentConfig, namespace: pulumi.Input[str],
                          labels: dict[str, str], opts: pulumi.ResourceOptions) -> None:
        endpoint: dict[str, Any] = {"port": SCRAPE_PORT_NAME, "path": METRICS_PATH, "interval": "30s"}
        # The tracking server's request metrics (mlflow server --expose-prometheus) from its sidecar's port, as
        # the metrics user: MLflow's own /metrics is admin-only (workloads/tracking_metrics.py).
        monitors = {"serving": (SERVING_SELECTOR, endpoint),
                    "tracking": (TRACKING_SELECTOR, {**endpoint, "port": TRACKING_METRICS_PORT, "basicAuth": {
                        "username": {"name": TRACKING_CREDENTIALS, "key": "MLFLOW_TRACKING_USERNAME"},
                        "password": {"name": TRACKING_CREDENTIALS, "key": "MLFLOW_TRACKING_PASSWORD"}}})}
        for role, (selector, scrape) in monitors.items():
            k8s.apiextensions.CustomResource(
                f"{name}-{role}-monitor", api_version=MONITORING_API, kind="ServiceMonitor",
                metadata={"name": f"mlops-{role}", "namespace": namespace, "labels": labels},
                spec={"selector": {"matchLabels": selector}, "namespaceSelector": {"matchNames": [env.namespace]},
                      "endpoints": [scrape]},
                opts=opts)

    def _stack(self, name: str, env: EnvironmentConfig) -> list[pulumi.Resource]:
        """kube-prometheus-stack, the Pushgateway and (GPU pools) the DCGM exporter, as Helm releases."""
        cfg = env.observability
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-grafana-admin", length=32, special=False, opts=child)
        release = k8s.helm.v3.Release(
            f"{name}-stack", name=STACK_RELEASE, chart="kube-prometheus-stack", version=cfg.chart_version,
            namespace=cfg.namespace, create_namespace=True,
            repository_opts={"repo": "https://prometheus-community.github.io/helm-charts"},
            values=stack_values(env, pulumi.Output.secret(password.result)), opts=child)
        after = pulumi.ResourceOptions(parent=self, depends_on=[release])
        releases: list[pulumi.Resource] = [release]
        releases.append(k8s.helm.v3.Release(
            f"{name}-pushgateway", name=PUSHGATEWAY, chart="prometheus-pushgateway",
            version=cfg.pushgateway_chart_version, namespace=cfg.namespace,
            repository_opts={"repo": "https://prometheus-community.github.io/helm-charts"},
            values=pushgateway_values(env), opts=after))
        if any(pool.gpu for pool in env.cluster.training_pools):
            releases.append(k8s.helm.v3.Release(
                f"{name}-dcgm-exporter", name="dcgm-exporter", chart="dcgm-exporter",
                version=cfg.dcgm_chart_version, namespace=cfg.namespace,
                repository_opts={"repo": "https://nvidia.github.io/dcgm-exporter/helm-charts"},
                values=dcgm_values(env), opts=after))
        return releases


def _system_nodes(env: EnvironmentConfig) -> dict[str, str]:
    return {"mlops-platform/pool": "system"} if env.cluster.mode == "create" else {}


def stack_values(env: EnvironmentConfig, grafana_password: pulumi.Input[str]) -> dict[str, Any]:
    cfg = env.observability
    system = _system_nodes(env)
    ((label, value),) = cfg.dashboard_labels.items()  # the sidecar takes one label (config checks)
    selector = {"matchLabels": dict(cfg.selector_labels)}
    return {
        "grafana": {
            "adminPassword": grafana_password,  # never the chart's well-known default
            "nodeSelector": system,
            "sidecar": {"dashboards": {
                "enabled": True, "label": label, "labelValue": value, "searchNamespace": "ALL",
                "folderAnnotation": FOLDER_ANNOTATION, "provider": {"foldersFromFilesStructure": True}}},
        },
        "prometheus": {"prometheusSpec": {
            "retention": cfg.retention,
            "nodeSelector": system,
            # Explicit selectors (the chart's default, spelled out): our objects carry these labels in
            # every environment namespace.
            "serviceMonitorSelectorNilUsesHelmValues": False, "serviceMonitorSelector": selector,
            "podMonitorSelectorNilUsesHelmValues": False, "podMonitorSelector": selector,
            "ruleSelectorNilUsesHelmValues": False, "ruleSelector": selector,
            "serviceMonitorNamespaceSelector": {}, "podMonitorNamespaceSelector": {}, "ruleNamespaceSelector": {},
            "storageSpec": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": cfg.volume_size}}}}},
        }},
        "alertmanager": {"alertmanagerSpec": {"nodeSelector": system}},
        "prometheusOperator": {"nodeSelector": system},
        # The node-pool dashboard groups nodes by their pool label.
        "kube-state-metrics": {"metricLabelsAllowlist": ["nodes=[mlops-platform/pool]"], "nodeSelector": system},
        # node-exporter runs on every node, training nodes (tainted) included.
        "prometheus-node-exporter": {"tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]},
    }


def pushgateway_values(env: EnvironmentConfig) -> dict[str, Any]:
    cfg = env.observability
    return {
        "fullnameOverride": PUSHGATEWAY,
        "nodeSelector": _system_nodes(env),
        # honorLabels: the pushed namespace/mlops_endpoint labels are kept, not replaced by the gateway's.
        "serviceMonitor": {"enabled": True, "namespace": cfg.namespace, "honorLabels": True,
                           "additionalLabels": dict(cfg.selector_labels)},
    }


def dcgm_values(env: EnvironmentConfig) -> dict[str, Any]:
    cfg = env.observability
    return {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "mlops-platform/training", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "serviceMonitor": {"enabled": True, "additionalLabels": dict(cfg.selector_labels),
                           # `node` joins GPU series with kube_node_labels (the pool) on the dashboard.
                           "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"],
                                            "targetLabel": "node", "action": "replace"}]},
    }
