"""Prometheus metrics of one serving worker (each worker process has its own registry)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workloads.capture.writer import CaptureWriter
    from workloads.serving.model import LoadedModel

_LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by status and latency, batch sizes, the version served, the path each request took."""

    def __init__(self, capture: CaptureWriter | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("mlops_serving_requests", "Scoring requests by HTTP status", ["status"], registry=r)
        self.latency = Histogram("mlops_serving_request_seconds", "Scoring request latency", registry=r,
                                 buckets=_LATENCY_BUCKETS)
        self.batch_rows = Histogram("mlops_serving_batch_rows", "Rows per predict call", registry=r,
                                    buckets=_ROW_BUCKETS)
        self.batch_requests = Histogram("mlops_serving_batch_requests", "Requests per predict call", registry=r,
                                        buckets=_REQUEST_BUCKETS)
        self.model_info = Gauge("mlops_model_version_info", "The model version being served (value 1)",
                                ["model", "alias", "version"], registry=r)
        self.ready = Gauge("mlops_model_ready", "1 when a model version is loaded", registry=r)
        paths = Counter("mlops_serving_path_requests", "Scoring requests by path: fast (batch-parsed) or mlflow "
                        "(MLflow's per-request parsing)", ["path"], registry=r)
        self.fast_path, self.mlflow_path = paths.labels("fast"), paths.labels("mlflow")
        self._by_status: dict[int, Any] = {}
        if capture is not None:
            r.register(_CaptureCollector(capture))

    def observe_request(self, status: int, seconds: float) -> None:
        counter = self._by_status.get(status)
        if counter is None:  # labels() costs a lock and a dict lookup: keep the child per status
            counter = self._by_status[status] = self.requests.labels(str(status))
        counter.inc()
        self.latency.observe(seconds)

    def on_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def on_swap(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            with contextlib.suppress(KeyError):
                self.model_info.remove(old.name, old.alias, old.version)
        self.model_info.labels(new.name, new.alias, new.version).set(1)
        self.ready.set(1)

    def exposition(self) -> tuple[bytes, str]:
        """The scrape body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _CaptureCollector:
    """Reads the capture writer's counters at scrape time."""

    def __init__(self, capture: CaptureWriter) -> None:
        self.capture = capture

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.capture.stats
        yield CounterMetricFamily("mlops_capture_records_written", "Captured rows written", value=s.records_written)
        yield CounterMetricFamily("mlops_capture_records_dropped", "Captured rows dropped (buffer full or lost)",
                                  value=s.records_dropped)
        yield CounterMetricFamily("mlops_capture_flush_errors", "Failed capture writes", value=s.flush_errors)
        yield GaugeMetricFamily("mlops_capture_buffered_rows", "Rows waiting to be written", value=s.buffered_rows)
