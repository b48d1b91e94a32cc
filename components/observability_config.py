"""The `observability` section of a stack file: who scrapes, where dashboards and alerts go, what we install.

Its own module (config.py composes it as `EnvironmentConfig.observability`) so the monitoring
stack's pins and labels sit next to each other. Two situations:
- `enabled: true`: this stack installs kube-prometheus-stack (Prometheus Operator, Prometheus,
  Alertmanager, Grafana, kube-state-metrics, node-exporter), a Pushgateway and, with GPU pools,
  NVIDIA's DCGM exporter, from their official Helm charts at the pinned versions below;
- `enabled: false`: a stack that is already there is targeted: `operator: true` when it runs the
  Prometheus Operator (ServiceMonitor/PrometheusRule objects), else prometheus.io annotations;
  `selectorLabels`, `dashboardLabels` and `scraperPodLabels` say what that stack selects and is.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from components import config_values as cv

STACK_RELEASE = "kube-prometheus-stack"  # the Helm release name; the chart's Prometheus selects `release: <it>`
STACK_CHART_VERSION = "88.5.3"  # prometheus-community/kube-prometheus-stack
PUSHGATEWAY_CHART_VERSION = "3.8.0"  # prometheus-community/prometheus-pushgateway
DCGM_CHART_VERSION = "4.8.2"  # NVIDIA/dcgm-exporter
_CHART_VERSION = r"^[0-9]+\.[0-9]+\.[0-9]+$"
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def label_set(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes label keys and values (unlike node labels, kubernetes.io keys are fine here)."""
    if not labels:
        raise ValueError("is empty; give at least one label, e.g. {release: kube-prometheus-stack}")
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if not _LABEL_NAME.match(name) or (prefix and not _LABEL_PREFIX.match(prefix)):
            raise ValueError(f"key {key!r} is not a label key: [prefix/]name, name <= 63 letters, digits, '-_.'")
        if not isinstance(value, str) or not (value == "" or _LABEL_NAME.match(value)):
            raise ValueError(f"value {value!r} of {key!r} is not a label value: <= 63 letters, digits, '-_.'")
    return labels


Labels = Annotated[dict[str, str], AfterValidator(label_set)]


class ObservabilityConfig(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, allow_inf_nan=False
    )

    enabled: bool = False  # install the monitoring stack in `namespace`
    operator: bool | None = None  # the Prometheus Operator's CRDs are present; None -> enabled
    namespace: str = Field(default="monitoring", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    chart_version: str = Field(default=STACK_CHART_VERSION, pattern=_CHART_VERSION)
    pushgateway_chart_version: str = Field(default=PUSHGATEWAY_CHART_VERSION, pattern=_CHART_VERSION)
    dcgm_chart_version: str = Field(default=DCGM_CHART_VERSION, pattern=_CHART_VERSION)
    # What the stack's Prometheus selects ServiceMonitors/PrometheusRules by.
    selector_labels: Labels = {"release": STACK_RELEASE}
    # What Grafana's dashboard sidecar picks ConfigMaps up by.
    dashboard_labels: Labels = {"grafana_dashboard": "1"}
    # The scraping Prometheus pods (in `namespace`): NetworkPolicies admit them to /metrics.
    scraper_pod_labels: Labels = {"app.kubernetes.io/name": "prometheus"}
    # Where monitoring runs push their figures; default with `enabled`: the Pushgateway we install.
    pushgateway_url: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/\S*)?$")
    retention: str = Field(default="15d", pattern=r"^[1-9][0-9]{0,3}[hdw]$")
    volume_size: cv.VolumeSize = "50Gi"
    alert_error_rate: float = Field(default=0.05, gt=0, le=1)  # share of 5xx over 10 minutes
    alert_p99_seconds: float = Field(default=0.5, gt=0, le=60)

    @property
    def uses_operator(self) -> bool:
        return self.enabled if self.operator is None else self.operator

    @property
    def default_selector(self) -> bool:
        return self.selector_labels == {"release": STACK_RELEASE}

    @model_validator(mode="after")
    def _consistent(self) -> ObservabilityConfig:
        if self.enabled and self.operator is False:
            raise ValueError("operator: false but enabled: true installs the Prometheus Operator; "
                             "remove operator or set it to true")
        if len(self.dashboard_labels) != 1:
            raise ValueError(f"dashboardLabels: {self.dashboard_labels} has {len(self.dashboard_labels)} labels; "
                             "Grafana's sidecar selects by one label, e.g. {grafana_dashboard: '1'}")
        if self.enabled and not self.default_selector:
            raise ValueError(f"selectorLabels: {self.selector_labels} is only for a stack this one does not "
                             f"install (enabled: false); the installed Prometheus selects release: {STACK_RELEASE}")
        return self


def check_cluster_mode(config: ObservabilityConfig, cluster_mode: str) -> None:
    """The stack is cluster-wide: only the stack that owns the cluster installs it."""
    if config.enabled and cluster_mode == "existing":
        raise ValueError("observability.enabled: true but cluster.mode is 'existing': the stack that owns the "
                         "cluster installs the monitoring stack; set enabled: false here (operator: true "
                         "when that stack runs the Prometheus Operator)")
