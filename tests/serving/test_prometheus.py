"""/metrics across worker processes (workloads/serving/prometheus.py): real uvicorn workers, real scrapes."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.helpers import free_port
from workloads.serving import prometheus as prom

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in\n{text}"
    return found[0]


class Server:
    """`WORKERS` uvicorn workers serving tests/serving/metrics_app.py, aggregated or per worker."""

    def __init__(self, per_worker: bool) -> None:
        self.port = free_port()
        script = textwrap.dedent(f"""
            from workloads.serving import prometheus as prom
            if not {per_worker}:
                print(prom.prepare_multiprocess(), flush=True)
            else:
                print("-", flush=True)
            import uvicorn
            uvicorn.run("tests.serving.metrics_app:create_app", factory=True, host="127.0.0.1", port={self.port},
                        workers={WORKERS}, log_level="warning")
        """)
        env = {**os.environ, "METRICS_APP_PER_WORKER": "1" if per_worker else "0"}
        env.pop(prom.MULTIPROC_ENV, None)
        self.proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.directory = self.proc.stdout.readline().strip()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/ready", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("the test server did not start")

    def hit(self, n: int) -> set[int]:
        """n requests, each on its own connection, so the kernel spreads them over the workers."""
        def one(_: int) -> int:
            return int(httpx.get(f"{self.url}/hit", headers={"Connection": "close"}, timeout=10).text)

        with cf.ThreadPoolExecutor(8) as pool:
            return set(pool.map(one, range(n)))

    def scrape(self) -> str:
        return httpx.get(f"{self.url}/metrics", headers={"Connection": "close"}, timeout=10).text

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spread_hits(server: Server) -> tuple[int, set[int]]:
    """Requests until at least two workers served some (the point of the test); returns count and pids."""
    total, pids = 0, set()
    while len(pids) < 2 and total < 600:
        pids |= server.hit(60)
        total += 60
    assert len(pids) >= 2, "the kernel sent every request to one worker"
    return total, pids


def test_every_scrape_counts_every_worker() -> None:
    server = Server(per_worker=False)
    try:
        total, pids = spread_hits(server)
        time.sleep(0.3)  # the capture bridges sync every 50 ms in this app
        for _ in range(12):  # each scrape reaches one worker or another
            text = server.scrape()
            assert value(text, "mlops_serving_requests_total", status="200", mlops_endpoint="demo") == total
            assert value(text, "mlops_serving_request_seconds_count", mlops_endpoint="demo") == total
            assert value(text, "mlops_serving_request_seconds_bucket", le="0.1", mlops_endpoint="demo") == total
            assert value(text, "mlops_capture_records_written_total", mlops_endpoint="demo") == 3 * total
            assert value(text, "mlops_model_ready", mlops_endpoint="demo") == 1  # livemin over live workers
            # livesum: every worker that served a request has one buffered row
            assert value(text, "mlops_capture_buffered_rows", mlops_endpoint="demo") == len(pids)
    finally:
        server.stop()
    assert server.directory and not Path(server.directory).exists(), "the metrics directory outlived the server"


def test_control_without_aggregation_each_scrape_sees_one_worker() -> None:
    """The bug the module fixes: per-worker registries, so no scrape shows all requests."""
    server = Server(per_worker=True)
    try:
        total, _ = spread_hits(server)
        for _ in range(6):
            assert value(server.scrape(), "mlops_serving_requests_total", status="200") < total
    finally:
        server.stop()


def test_prepare_after_import_and_worker_exit(tmp_path: Path) -> None:
    """prometheus_client imported first still switches to files; a leaving worker's live gauges go."""
    script = textwrap.dedent(f"""
        import os, prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge
        from workloads.serving import prometheus as prom
        path = prom.prepare_multiprocess({str(tmp_path)!r})
        registry = CollectorRegistry()
        Counter("c", "c", registry=registry).inc(2)
        Gauge("mlops_model_ready", "r", registry=registry, multiprocess_mode="livemin").set(1)
        before = prom.exposition(registry)[0].decode()
        files = sorted(p.name.split("_")[0] for p in path.iterdir())
        prom.worker_exit()
        after = prom.exposition(registry)[0].decode()
        print(repr((files, "c_total 2.0" in before, "mlops_model_ready" in before, "mlops_model_ready" in after)))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != prom.MULTIPROC_ENV})
    files, counted, ready_before, ready_after = eval(out.stdout)  # noqa: S307 (our own repr)
    assert "counter" in files and "gauge" in files
    assert counted and ready_before and not ready_after


def test_bridge_syncs_deltas_and_restarts_after_a_reset() -> None:
    registry = CollectorRegistry()
    stats = SimpleNamespace(records_written=5, records_dropped=0, flush_errors=0, buffered_rows=7)
    bridge = prom.capture_bridge(registry, SimpleNamespace(stats=stats))
    bridge.sync()
    bridge.sync()  # no change, no double count
    stats.records_written = 8
    bridge.sync()
    assert registry.get_sample_value("mlops_capture_records_written_total") == 8
    stats.records_written = 2  # a new writer counts from zero again
    bridge.sync()
    assert registry.get_sample_value("mlops_capture_records_written_total") == 10
    assert registry.get_sample_value("mlops_capture_buffered_rows") == 7


def test_exposition_labels_every_sample_in_one_process() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("mlops_serving_requests", "r", ["status"], registry=registry).labels("200").inc()
    body, media_type = prom.exposition(registry, labels={"mlops_endpoint": "churn"})
    assert media_type.startswith("text/plain")
    assert value(body.decode(), "mlops_serving_requests_total", status="200", mlops_endpoint="churn") == 1


@pytest.mark.parametrize("name", sorted(prom.GAUGE_MODES))
def test_gauge_modes_are_prometheus_client_modes(name: str) -> None:
    from prometheus_client import Gauge

    Gauge(name, "x", registry=CollectorRegistry(), multiprocess_mode=prom.GAUGE_MODES[name])
