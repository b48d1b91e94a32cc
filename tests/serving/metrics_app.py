"""A minimal ASGI app with the serving metrics wiring, for the multi-worker test (uvicorn imports it by name).

`/hit` counts one request (a counter, a histogram, a capture-like counter through the bridge) and
answers its worker's pid; `/metrics` answers `exposition(...)`, or with METRICS_APP_PER_WORKER=1
the worker's own registry (the behaviour before aggregation: the control).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from workloads.serving import prometheus as prom


def create_app() -> Any:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    requests = Counter("mlops_serving_requests", "requests", ["status"], registry=registry)
    latency = Histogram("mlops_serving_request_seconds", "latency", registry=registry, buckets=(0.1, 1.0))
    ready = Gauge("mlops_model_ready", "ready", registry=registry,
                  multiprocess_mode=prom.GAUGE_MODES["mlops_model_ready"])
    stats = SimpleNamespace(records_written=0, records_dropped=0, flush_errors=0, buffered_rows=0)
    bridge = prom.capture_bridge(registry, SimpleNamespace(stats=stats))
    per_worker = os.environ.get("METRICS_APP_PER_WORKER") == "1"

    async def send_text(send: Any, status: int, body: bytes, media_type: str = "text/plain") -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    ready.set(1)
                    bridge.start(interval=0.05)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    bridge.stop()
                    prom.worker_exit()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/hit":
            requests.labels("200").inc()
            latency.observe(0.05)
            stats.records_written += 3  # the writer's own cumulative count; the bridge syncs it
            stats.buffered_rows = 1
            await send_text(send, 200, str(os.getpid()).encode())
        elif scope["path"] == "/metrics":
            if per_worker:
                await send_text(send, 200, generate_latest(registry))
            else:
                bridge.sync()
                body, media_type = prom.exposition(registry, labels={"mlops_endpoint": "demo"})
                await send_text(send, 200, body, media_type)
        else:
            await send_text(send, 404, b"")

    return app
