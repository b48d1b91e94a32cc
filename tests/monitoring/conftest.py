"""Monitoring test fixtures: a stand-in Kubernetes API server and mounted retraining Jobs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"generateName": "train-churn-retrain-"},
       "spec": {"template": {"spec": {"containers": [{"name": "train", "args": ["train", "/app/specs/churn.yaml"]}]}}}}


@pytest.fixture
def job_manifest() -> dict:
    """The Job manifest `mounted` writes (as components/jobs.py renders it, trimmed)."""
    return json.loads(json.dumps(JOB))


@pytest.fixture
def api_server():
    received: list[tuple[str, dict, str]] = []
    status = {"code": 201}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body, self.headers["Authorization"]))
            name = body["metadata"]["generateName"] + str(len(received))
            payload = json.dumps({**body, "metadata": {**body["metadata"], "name": name}}).encode()
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received, status
    server.shutdown()


@pytest.fixture
def mounted(tmp_path: Path) -> tuple[Path, Path]:
    jobs, token = tmp_path / "retrain", tmp_path / "token"
    jobs.mkdir()
    token.mkdir()
    (jobs / "0-train-churn.json").write_text(json.dumps(JOB))
    second = json.loads(json.dumps(JOB))
    second["metadata"]["generateName"] = "train-churn-select-retrain-"
    (jobs / "1-train-churn-select.json").write_text(json.dumps(second))
    (token / "token").write_text("pod-token\n")
    (token / "namespace").write_text("mlops-dev")
    return jobs, token
