"""One /metrics for all of `mlops serve`'s worker processes (prometheus-client's multiprocess mode).

Each uvicorn worker counts in its own process, and a scrape reaches one of them: with
`--workers 2`, one scrape showed 240 of 400 captured rows. In multiprocess mode every metric
value lives in a memory-mapped file under `PROMETHEUS_MULTIPROC_DIR` and the scrape merges
the files of all workers (counters and histograms add up; gauges per their mode below).

How the app uses it:
1. the parent, before any worker starts and before any metric exists: `prepare_multiprocess()`
   (a fresh, empty directory under /tmp, the pod's writable emptyDir; removed at exit);
2. each Gauge gets `multiprocess_mode=GAUGE_MODES[name]`;
3. `/metrics` answers `exposition(registry, labels={"mlops_endpoint": name})`: all workers' values,
   every sample labelled with the endpoint (so dashboards group by it however it was scraped);
4. counts kept outside prometheus-client (the capture writer's stats) go through a `CounterBridge`,
   which a worker syncs every second and at shutdown;
5. a worker leaving calls `worker_exit()`, so its `live*` gauges stop counting.
Without `prepare_multiprocess()` (tests, one process) the same calls serve the process's own registry.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

GaugeMode = Literal["livemax", "livemin", "livesum"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How each serving gauge merges across workers (live*: a worker that exited no longer counts).
GAUGE_MODES: dict[str, GaugeMode] = {
    "mlops_model_version_info": "livemax",  # 1 while any worker serves that version (set the old one to 0 on swap)
    "mlops_model_ready": "livemin",  # 1 only when every worker has a model
    "mlops_capture_buffered_rows": "livesum",  # rows waiting in all workers' buffers: the capture queue depth
}


def prepare_multiprocess(parent: str | os.PathLike[str] | None = None) -> Path:
    """Turn multiprocess mode on for this process and the workers it starts; returns the directory."""
    path = Path(tempfile.mkdtemp(prefix="mlops-serve-metrics-", dir=parent or tempfile.gettempdir()))
    os.environ[MULTIPROC_ENV] = str(path)
    atexit.register(shutil.rmtree, path, True)
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client chose its value class when it was imported, before the variable was set.
        values.ValueClass = values.MultiProcessValue()
    return path


def multiprocess_dir() -> Path | None:
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path and Path(path).is_dir() else None


class _Labelled:
    """A collector that adds constant labels to every sample of another one."""

    def __init__(self, source: Any, labels: Mapping[str, str]) -> None:
        self.source, self.labels = source, dict(labels)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        for family in self.source.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield out


def exposition(registry: Any, labels: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """The scrape body (all workers merged in multiprocess mode) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    source = registry
    path = multiprocess_dir()
    if path is not None:
        # The worker's own registry holds the same values as its files: read only the files.
        source = CollectorRegistry()
        MultiProcessCollector(source, path=str(path))
    return generate_latest(_Labelled(source, labels or {})), CONTENT_TYPE_LATEST  # type: ignore[arg-type]


def worker_exit(pid: int | None = None) -> None:
    """Drop a leaving worker's live* gauge files (its buffered rows, readiness, version)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid() if pid is None else pid)


class CounterBridge:
    """Counters and gauges whose values another object keeps (cumulative per process), synced by delta.

    `counters` and `gauges` map a metric name to (help text, a function reading the current value).
    A counter that goes down (the source was replaced) starts again from its new value.
    """

    def __init__(self, registry: Any, counters: Mapping[str, tuple[str, Callable[[], float]]],
                 gauges: Mapping[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        from prometheus_client import Counter, Gauge

        self._counters = {name: (Counter(name, doc, registry=registry), read) for name, (doc, read) in counters.items()}
        self._gauges = {name: (Gauge(name, doc, registry=registry, multiprocess_mode=GAUGE_MODES.get(name, "livesum")),
                               read) for name, (doc, read) in (gauges or {}).items()}
        self._seen = dict.fromkeys(self._counters, 0.0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> None:
        with self._lock:
            for name, (counter, read) in self._counters.items():
                value = float(read())
                delta = value - self._seen[name] if value >= self._seen[name] else value
                if delta:
                    counter.inc(delta)
                self._seen[name] = value
            for gauge, read in self._gauges.values():
                gauge.set(float(read()))

    def start(self, interval: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                self.sync()

        self._thread = threading.Thread(target=loop, name="metrics-bridge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sync()


def capture_bridge(registry: Any, capture: Any) -> CounterBridge:
    """The capture writer's stats as the metrics serving has always exported (same names)."""
    s = lambda: capture.stats  # noqa: E731 (read at sync time: the writer may replace its stats object)
    return CounterBridge(
        registry,
        counters={
            "mlops_capture_records_written": ("Captured rows written", lambda: s().records_written),
            "mlops_capture_records_dropped": ("Captured rows dropped (buffer full or lost)", lambda: s().records_dropped),
            "mlops_capture_flush_errors": ("Failed capture writes", lambda: s().flush_errors),
        },
        gauges={"mlops_capture_buffered_rows": ("Rows waiting to be written", lambda: s().buffered_rows)},
    )
