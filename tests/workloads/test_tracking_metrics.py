"""The tracking server's metrics sidecar (workloads/tracking_metrics.py): what it serves is the sum over workers."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest, make_wsgi_app

from workloads import tracking_metrics

# What one uvicorn worker of `mlflow server --expose-prometheus` does: count requests in multiprocess mode.
WORKER = """
from prometheus_client import Counter
Counter("mlflow_http_request_total", "requests", ["method", "status"]).labels("GET", "200").inc({n})
"""


def test_the_sidecar_sums_every_workers_files(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for n in (3, 4):  # two worker processes, each with its own files
        subprocess.run([sys.executable, "-c", WORKER.format(n=n)], env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
    text = generate_latest(tracking_metrics.registry(str(tmp_path))).decode()
    assert 'mlflow_http_request_total{method="GET",status="200"} 7.0' in text


def test_a_directory_not_there_yet_is_created(tmp_path: Path) -> None:
    """The sidecar may start before the server's first worker created the directory."""
    tracking_metrics.registry(str(tmp_path / "not-yet"))
    assert (tmp_path / "not-yet").is_dir()


def test_only_the_metrics_user_reads_them(tmp_path: Path) -> None:
    app = tracking_metrics.with_basic_auth(make_wsgi_app(tracking_metrics.registry(str(tmp_path))), "scraper", "pw:1")
    statuses: list[str] = []
    for header in (None, "Basic " + base64.b64encode(b"scraper:pw:2").decode(),
                   "Basic " + base64.b64encode(b"scraper:pw:1").decode()):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "", "SERVER_NAME": "x",
                   "SERVER_PORT": "1", "wsgi.url_scheme": "http", **({"HTTP_AUTHORIZATION": header} if header else {})}
        b"".join(app(environ, lambda status, headers: statuses.append(status)))
    assert [s.split()[0] for s in statuses] == ["401", "401", "200"]


def test_bad_arguments_and_missing_credentials_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="usage: tracking_metrics DIR PORT, got"):
        tracking_metrics.main([str(tmp_path), "http"])
    monkeypatch.delenv(tracking_metrics.PASSWORD_ENV, raising=False)
    with pytest.raises(SystemExit, match="MLFLOW_TRACKING_PASSWORD must be set"):
        tracking_metrics.main([str(tmp_path), "9464"])
