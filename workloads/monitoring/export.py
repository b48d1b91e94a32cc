"""A monitoring run's figures as Prometheus metrics, pushed to a Pushgateway.

A monitoring run is a CronJob's pod that lives for seconds: Prometheus can't scrape it, so the run
pushes its figures (`push_run(result)`) to the Pushgateway at `MLOPS_PUSHGATEWAY_URL` (set on the
monitoring CronJobs from `observability`; unset: nothing is pushed, the run is still logged to MLflow).
Each push replaces the group `job=mlops-monitoring, namespace=<env namespace>, mlops_endpoint=<endpoint>`
(HTTP PUT), so a feature that left the model leaves the metrics too; Prometheus scrapes the gateway
with honor_labels, so these labels stay as pushed. Metric names (the dashboards and alert rules use them):

| metric | labels | value |
|---|---|---|
| `mlops_monitoring_last_run_timestamp_seconds` | | when the run completed (alert: not run for 2 periods) |
| `mlops_monitoring_run_duration_seconds` | | how long it took |
| `mlops_monitoring_run_info` | model, model_version, alias | 1 |
| `mlops_monitoring_status` | status | 1 for the run's status (the decision: ok, drift, ...) |
| `mlops_monitoring_window_rows` | | captured rows judged |
| `mlops_monitoring_drift_detected`, `mlops_monitoring_performance_decayed` | | 0 or 1 |
| `mlops_monitoring_drift_share`, `mlops_monitoring_drifted_features`, `mlops_monitoring_max_psi` | | |
| `mlops_monitoring_feature_psi`, `mlops_monitoring_feature_drifted` | feature | per feature |
| `mlops_monitoring_feature_ks` | feature | KS distance, numeric features |
| `mlops_monitoring_prediction_psi` | | drift of the predictions |
| `mlops_monitoring_metric`, `mlops_monitoring_holdout_metric` | metric | labelled rows' metric, the holdout's |
| `mlops_monitoring_metric_drop`, `mlops_monitoring_labelled_rows` | | |
| `mlops_monitoring_retrain_triggered` | | 0 or 1 |
| `mlops_monitoring_retrain_decision` | decision | 1 (champion / challenger) when retraining registered a version |

A Pushgateway that is down or slow never fails the run: the push is logged and reported as not done.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from workloads.monitoring.result import MonitorResult

log = logging.getLogger(__name__)

PUSHGATEWAY_ENV = "MLOPS_PUSHGATEWAY_URL"
NAMESPACE_ENV = "MLOPS_NAMESPACE"  # the stack contract's namespace (ConfigMap workload-contract)
JOB = "mlops-monitoring"


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


class RunCollector:
    """The figures of one MonitorResult, read when the registry is serialized."""

    def __init__(self, result: MonitorResult, completed_at: float) -> None:
        self.result = result
        self.completed_at = completed_at

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        r = self.result
        yield GaugeMetricFamily("mlops_monitoring_last_run_timestamp_seconds",
                                "When the last monitoring run completed (Unix time)", value=self.completed_at)
        yield GaugeMetricFamily("mlops_monitoring_run_duration_seconds", "Duration of the monitoring run",
                                value=r.seconds)
        info = GaugeMetricFamily("mlops_monitoring_run_info", "The model version the run judged",
                                 labels=["model", "model_version", "alias"])
        info.add_metric([r.model_name, r.model_version, r.alias], 1)
        yield info
        status = GaugeMetricFamily("mlops_monitoring_status", "1 for the status the run ended with", labels=["status"])
        status.add_metric([r.status], 1)
        yield status
        yield GaugeMetricFamily("mlops_monitoring_window_rows", "Captured rows in the window",
                                value=float(r.window.get("rows", 0)))
        yield GaugeMetricFamily("mlops_monitoring_drift_detected", "1 when drift was found", value=float(r.drift_detected))
        yield GaugeMetricFamily("mlops_monitoring_performance_decayed", "1 when the labelled metric decayed",
                                value=float(r.performance_decayed))
        yield from self._drift()
        yield from self._performance()
        yield from self._retraining()

    def _drift(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        d = self.result.drift
        if d is None:
            return
        yield GaugeMetricFamily("mlops_monitoring_drift_share", "Share of features that drifted", value=d.drift_share)
        yield GaugeMetricFamily("mlops_monitoring_drifted_features", "Features that drifted", value=float(d.n_drifted))
        if _finite(d.max_psi):
            yield GaugeMetricFamily("mlops_monitoring_max_psi", "Largest PSI of any feature", value=d.max_psi)
        psi = GaugeMetricFamily("mlops_monitoring_feature_psi", "Population stability index per feature",
                                labels=["feature"])
        ks = GaugeMetricFamily("mlops_monitoring_feature_ks", "Kolmogorov-Smirnov distance per numeric feature",
                               labels=["feature"])
        drifted = GaugeMetricFamily("mlops_monitoring_feature_drifted", "1 when the feature drifted", labels=["feature"])
        for f in d.features:
            if _finite(f.psi):
                psi.add_metric([f.name], f.psi)
            if f.test == "ks" and _finite(f.statistic):
                ks.add_metric([f.name], f.statistic)
            drifted.add_metric([f.name], float(f.drifted))
        yield from (psi, ks, drifted)
        if d.prediction is not None and _finite(d.prediction.psi):
            yield GaugeMetricFamily("mlops_monitoring_prediction_psi", "PSI of the predictions", value=d.prediction.psi)

    def _performance(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        p = self.result.performance
        if p is None:
            return
        current = GaugeMetricFamily("mlops_monitoring_metric", "The champion's metric on labelled captured rows",
                                    labels=["metric"])
        current.add_metric([p.metric], p.current)
        holdout = GaugeMetricFamily("mlops_monitoring_holdout_metric", "The champion's metric on its holdout",
                                    labels=["metric"])
        holdout.add_metric([p.metric], p.holdout)
        yield from (current, holdout)
        yield GaugeMetricFamily("mlops_monitoring_metric_drop", "Drop of the metric (positive = worse)", value=p.drop)
        yield GaugeMetricFamily("mlops_monitoring_labelled_rows", "Labelled rows scored", value=float(p.labelled_rows))

    def _retraining(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        t = self.result.retraining
        yield GaugeMetricFamily("mlops_monitoring_retrain_triggered", "1 when the run started retraining",
                                value=float(bool(t and t.triggered)))
        if t is not None and t.decision:
            decision = GaugeMetricFamily("mlops_monitoring_retrain_decision", "The registry gate's decision",
                                         labels=["decision"])
            decision.add_metric([t.decision], 1)
            yield decision


def run_registry(result: MonitorResult, completed_at: float | None = None) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(RunCollector(result, time.time() if completed_at is None else completed_at))
    return registry


def push_run(result: MonitorResult, *, url: str | None = None, namespace: str | None = None,
             timeout: float = 5.0, completed_at: float | None = None) -> bool:
    """Push one completed run; True when the gateway took it, False when not configured or it failed."""
    from prometheus_client import push_to_gateway

    url = url or os.environ.get(PUSHGATEWAY_ENV)
    if not url:
        return False
    grouping = {"namespace": namespace or os.environ.get(NAMESPACE_ENV) or "default", "mlops_endpoint": result.endpoint}
    try:
        push_to_gateway(url, job=JOB, registry=run_registry(result, completed_at), grouping_key=grouping,
                        timeout=timeout)
    except OSError as exc:  # URLError, HTTPError, timeouts, refused connections: all OSError
        log.warning("monitoring figures not pushed to %s: %s", url, exc)
        return False
    return True
