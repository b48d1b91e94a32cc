"""The tracking server's Prometheus metrics on their own port, beside MLflow's basic auth.

`mlflow server --expose-prometheus DIR` has each uvicorn worker write prometheus_client's multiprocess
files to DIR and serves their sum on its own `/metrics`, but through the basic-auth app, which since
MLflow 3.17 fails closed: a route without a permission validator (`/metrics` is one) is refused with
403 to every user but the admin. The scraper must not be the admin, and turning fail-closed off
(MLFLOW_BASIC_AUTH_FAIL_CLOSED=false) would also open the workspace and job routes MLflow has no
validators for. So the tracking pod runs this as a sidecar (components/tracking.py): it sums the same
files and serves them on a port only the scraping Prometheus may reach (components/netpol.py), to the
metrics user's basic auth (the Secret `tracking-credentials` the ServiceMonitor sends). Request counts
and latencies by method and status are all it shows: no user, run or model names.

    MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=... \
    python -c "from workloads.tracking_metrics import main; main()" DIR PORT
"""

from __future__ import annotations

import base64
import hmac
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector

USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def registry(directory: str) -> CollectorRegistry:
    """The sum over every worker's files in `directory`, read at each scrape."""
    os.makedirs(directory, exist_ok=True)  # the sidecar may start before mlflow creates it
    collected = CollectorRegistry()
    MultiProcessCollector(collected, path=directory)
    return collected


def with_basic_auth(app: Wsgi, username: str, password: str) -> Wsgi:
    expected = b"Basic " + base64.b64encode(f"{username}:{password}".encode())

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="metrics"'),
                                                ("Content-Type", "text/plain")])
            return [b"authenticate as the metrics user\n"]
        return app(environ, start_response)

    return guarded


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """One line per scrape would drown the pod's log."""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        sys.exit(f"usage: tracking_metrics DIR PORT, got {args}")
    username, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if not username or not password:
        sys.exit(f"tracking_metrics: {USER_ENV} and {PASSWORD_ENV} must be set (the metrics user)")
    app = with_basic_auth(make_wsgi_app(registry(args[0])), username, password)
    stop = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server's thread starts (it inherits the mask), then waited for: until the kubelet
    # stops the pod, SIGTERM (or ^C) ends it cleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server = make_server("0.0.0.0", int(args[1]), app, handler_class=_Quiet)  # noqa: S104 - a pod's port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    signal.sigwait(stop)
    server.shutdown()
    thread.join(5)
