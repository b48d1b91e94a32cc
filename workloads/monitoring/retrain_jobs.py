"""Retraining in the cluster: the monitor creates the retraining Job(s) instead of training itself.

`components/jobs.py` mounts the Jobs the monitor may start as JSON files (ConfigMap
`retrain-jobs` at `$MLOPS_RETRAIN_JOBS_DIR`) and gives the monitoring pod a short-lived token
whose Role may only create Jobs. The monitor stores the newest data (reference plus labelled
captures) under `s3://<capture_bucket>/monitoring/<endpoint>/retrain/`, adds `--data <uri>` to
each Job's container, and POSTs the Jobs, in file-name order, to the namespace's Jobs API.
Plain HTTPS with the pod's own token: no Kubernetes client library in the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from workloads.errors import MlopsError

JOBS_DIR_ENV = "MLOPS_RETRAIN_JOBS_DIR"
TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class RetrainJobError(MlopsError, RuntimeError):
    pass


def jobs_dir() -> Path | None:
    """Where the Job manifests are mounted, when this monitor runs in the cluster."""
    value = os.environ.get(JOBS_DIR_ENV)
    return Path(value) if value else None


def api_server() -> str:
    """The API server as seen from a pod (`MLOPS_KUBE_API` overrides it, e.g. for tests)."""
    if os.environ.get("MLOPS_KUBE_API"):
        return os.environ["MLOPS_KUBE_API"].rstrip("/")
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise RetrainJobError("KUBERNETES_SERVICE_HOST is not set: not running in a Kubernetes pod")
    return f"https://{host}:{port}"


def with_data(manifest: dict[str, Any], data_uri: str) -> dict[str, Any]:
    """The Job manifest with `--data <uri> --retraining` appended to every container's args."""
    job = json.loads(json.dumps(manifest))  # deep copy
    for container in job["spec"]["template"]["spec"]["containers"]:
        container["args"] = [*container.get("args", []), "--data", data_uri, "--retraining"]
    return job


def create_jobs(directory: Path, data_uri: str, *, token_dir: Path | None = None, api: str | None = None,
                timeout: float = 15.0) -> list[str]:
    """Create every Job in `directory` (sorted by file name); returns the created Jobs' names."""
    token_dir = token_dir or Path(os.environ.get("MLOPS_KUBE_TOKEN_DIR") or TOKEN_DIR)
    files = sorted(directory.glob("*.json"))
    if not files:
        raise RetrainJobError(f"{directory}: no retraining Job manifests (*.json)")
    token = (token_dir / "token").read_text().strip()
    namespace = (token_dir / "namespace").read_text().strip()
    ca = token_dir / "ca.crt"
    url = f"{api or api_server()}/apis/batch/v1/namespaces/{namespace}/jobs"
    created: list[str] = []
    with httpx.Client(verify=str(ca) if ca.exists() else True, timeout=timeout,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        for path in files:
            response = client.post(url, json=with_data(json.loads(path.read_text()), data_uri))
            if response.status_code >= 300:
                raise RetrainJobError(f"creating the Job from {path.name} failed: HTTP {response.status_code} "
                                      f"{response.text[:300]}" + (f" (created before it: {created})" if created else ""))
            created.append(response.json()["metadata"]["name"])
    return created
