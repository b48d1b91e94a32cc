"""Prometheus metrics of `mlops serve`: each worker counts in its own registry, and /metrics
answers for all workers (prometheus.py's multiprocess mode when the server prepared it), every
sample labelled `mlops_endpoint`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workloads.serving import prometheus

if TYPE_CHECKING:
    from workloads.capture.writer import CaptureWriter
    from workloads.serving.model import LoadedModel

_LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by status and latency, batch sizes, the version served, the path each request took."""

    def __init__(self, endpoint: str, capture: CaptureWriter | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.endpoint = endpoint
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mlops_serving_requests", "Scoring requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram("mlops_serving_request_seconds", "Scoring request latency", registry=r,
                                 buckets=_LATENCY_BUCKETS)
        self.batch_rows = Histogram("mlops_serving_batch_rows", "Rows per predict call", registry=r,
                                    buckets=_ROW_BUCKETS)
        self.batch_requests = Histogram("mlops_serving_batch_requests", "Requests per predict call", registry=r,
                                        buckets=_REQUEST_BUCKETS)
        self.model_info = Gauge("mlops_model_version_info", "The model version being served (value 1)",
                                ["model", "alias", "version"], registry=r,
                                multiprocess_mode=prometheus.GAUGE_MODES["mlops_model_version_info"])
        self.ready = Gauge("mlops_model_ready", "1 when a model version is loaded", registry=r,
                           multiprocess_mode=prometheus.GAUGE_MODES["mlops_model_ready"])
        paths = Counter("mlops_serving_path_requests", "Scoring requests by path: fast (batch-parsed) or mlflow "
                        "(MLflow's per-request parsing)", ["path"], registry=r)
        self.fast_path, self.mlflow_path = paths.labels("fast"), paths.labels("mlflow")
        self._rollout = Counter("mlops_serving_rollout_events", "Rollout events: canary (answered by the "
                                "challenger), canary_fallback, shadow (batches scored), shadow_failed", ["event"],
                                registry=r)
        self._by_status: dict[int, Any] = {}
        # The capture writer's own counts, synced into the registry every second and at each scrape.
        self.bridge = prometheus.capture_bridge(r, capture) if capture is not None else None

    def observe_request(self, status: int, seconds: float) -> None:
        counter = self._by_status.get(status)
        if counter is None:  # labels() costs a lock and a dict lookup: keep the child per status
            counter = self._by_status[status] = self.requests.labels(str(status))
        counter.inc()
        self.latency.observe(seconds)

    def rollout_event(self, event: str) -> None:
        self._rollout.labels(event).inc()

    def on_drop(self, old: LoadedModel) -> None:
        """An optional alias (a rollout's challenger) was deleted: its version is no longer served."""
        self.model_info.labels(old.name, old.alias, old.version).set(0)

    def on_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def on_swap(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:  # 0, not removed: in multiprocess mode a removed series lingers in the files
            self.model_info.labels(old.name, old.alias, old.version).set(0)
        self.model_info.labels(new.name, new.alias, new.version).set(1)
        self.ready.set(1)

    def start(self) -> None:
        if self.bridge is not None:
            self.bridge.start()

    def stop(self) -> None:
        """At worker shutdown: the last capture counts in, then this worker's live gauges out."""
        if self.bridge is not None:
            self.bridge.stop()
        prometheus.worker_exit()

    def exposition(self) -> tuple[bytes, str]:
        """The scrape body (every worker's values) and its content type."""
        if self.bridge is not None:
            self.bridge.sync()
        return prometheus.exposition(self.registry, labels={"mlops_endpoint": self.endpoint})
