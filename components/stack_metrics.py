"""The metrics the monitoring stack itself exports that our dashboards and alert rules use, in one place.

Our own metrics come from the code (workloads/serving, workloads/monitoring/export.py); these come
from what `observability.enabled` installs (or what an existing stack must run), with the exact
series names as Prometheus stores them. tests/infra/test_observability.py checks every PromQL
expression we ship against our code's metrics plus this list, so a name here is a claim: each
group says where it was checked.
"""

from __future__ import annotations

STACK_METRICS: dict[str, frozenset[str]] = {
    # kube-state-metrics v2.x (docs/metrics/workload/job-metrics.md, cronjob-metrics.md,
    # cluster/node-metrics.md, workload/pod-metrics.md). kube_node_labels carries `label_mlops_platform_pool`
    # only with `--metric-labels-allowlist=nodes=[mlops-platform/pool]` (set when we install the stack).
    "kube-state-metrics": frozenset({
        "kube_job_failed", "kube_job_complete", "kube_job_owner", "kube_job_status_active",
        "kube_job_status_start_time", "kube_job_status_completion_time",
        "kube_cronjob_status_last_successful_time", "kube_cronjob_status_last_schedule_time",
        "kube_cronjob_next_schedule_time", "kube_cronjob_status_active",
        "kube_node_labels", "kube_node_status_allocatable", "kube_pod_info", "kube_pod_container_resource_requests",
    }),
    # cAdvisor, scraped from the kubelet at /metrics/cadvisor (kube-prometheus-stack's kubelet ServiceMonitor).
    "cadvisor": frozenset({"container_cpu_usage_seconds_total", "container_memory_working_set_bytes"}),
    # NVIDIA dcgm-exporter default counters (etc/default-counters.csv): utilisation in %, frame buffer in MiB.
    "dcgm-exporter": frozenset({"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}),
    # The Pushgateway adds these per push group.
    "pushgateway": frozenset({"push_time_seconds", "push_failure_time_seconds"}),
    # Prometheus itself, per scrape target.
    "prometheus": frozenset({"up"}),
    # `mlflow server --expose-prometheus DIR` (prometheus-flask-exporter, defaults_prefix "mlflow", multiprocess
    # mode: no _created series), as components/tracking.py renders it; scraped from a running server with the
    # scraper's credentials by tests/contract/test_mlflow_permissions.py.
    "mlflow-server": frozenset({
        "mlflow_http_request_total", "mlflow_http_request_duration_seconds_bucket",
        "mlflow_http_request_duration_seconds_count", "mlflow_http_request_duration_seconds_sum",
    }),
}


def stack_metric_names() -> frozenset[str]:
    return frozenset().union(*STACK_METRICS.values())
