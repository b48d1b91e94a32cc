"""The local stand-ins for what a rendered stack expects in its cluster and cloud.

- S3 (the buckets, or in-cluster MinIO): a moto server on a free 127.0.0.1 port;
- Postgres (RDS, or in-cluster Postgres): a fresh database on the local server at 127.0.0.1:5432;
- the Kubernetes Jobs API the monitor posts retraining Jobs to: a recording HTTP server;
- cluster DNS names: rewritten to those addresses (`Cluster.rewrites`).
Secret values are test strings; every other value is exactly what was rendered.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from components.manifests import to_manifests
from components.render import RenderResult
from tests.contract.kubelet import Cluster

TRACKING_PORT = 5000  # what the tracking Service targets; the harness listens where a pod would


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Free for a server: bound with SO_REUSEADDR like uvicorn does (connections in TIME_WAIT don't count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class S3Server:
    """moto's S3 API on 127.0.0.1, started and stopped by pid."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("moto did not start")

    def client(self, key: str = "test", secret: str = "test") -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class JobsApi:
    """A stand-in for the namespace's Jobs API: records what the monitor creates, names it like Kubernetes."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.tokens.append(self.headers.get("Authorization", ""))
                body.setdefault("metadata", {})["name"] = body["metadata"].get("generateName", "job-") + \
                    f"{len(api.created):05d}"
                api.created.append(body)
                payload = json.dumps(body).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def cluster_for(result: RenderResult, *, s3_url: str, database_uri: str, api_url: str) -> Cluster:
    """ConfigMaps and Secrets of the render, with cluster and cloud addresses pointing at the stand-ins."""
    manifests = to_manifests(result)
    configmaps = {m["metadata"]["name"]: dict(m.get("data") or {}) for m in manifests if m["kind"] == "ConfigMap"}
    namespace = configmaps["workload-contract"]["MLOPS_NAMESPACE"]
    secrets = {m["metadata"]["name"]: dict(m.get("stringData") or m.get("data") or {})
               for m in manifests if m["kind"] == "Secret"}
    dsn = re.compile(r"postgresql(\+psycopg2)?://[^\s\"']+")
    local_dsn = database_uri.replace("postgresql://", "postgresql+psycopg2://")
    secrets = {name: {k: dsn.sub(local_dsn, v) for k, v in data.items()} for name, data in secrets.items()}
    rewrites = {
        f"mlflow.{namespace}.svc.cluster.local:{TRACKING_PORT}": f"127.0.0.1:{TRACKING_PORT}",
        f"http://minio.{namespace}.svc:9000": s3_url,
    }
    extra = {
        # Stand-ins for IRSA (static keys) and for the cloud's S3 endpoint (boto3 honours AWS_ENDPOINT_URL_S3).
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL_S3": s3_url,
        "AWS_DEFAULT_REGION": "us-east-1", "MLOPS_KUBE_API": api_url,
    }
    return Cluster(configmaps=configmaps, secrets=secrets, rewrites=rewrites, extra_env=extra, namespace=namespace)
