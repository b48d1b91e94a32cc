"""The quickstart's endpoint and its traffic: `mlops serve` in a child process, scored over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from workloads.devstack.processes import free_port, url
from workloads.errors import MlopsError

PARALLEL_REQUESTS = 8


class QuickstartError(MlopsError, RuntimeError):
    """A step of the quickstart did not do what it should; the message says where to look."""

    kind = "quickstart failed"


class Endpoint:
    """`mlops serve` in a child process we own (its own session, stopped by pid)."""

    def __init__(self, workdir: Path, model: str, endpoint_name: str) -> None:
        self.port = free_port()
        self.url = url(self.port)
        self.log = workdir / "logs" / "serve.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "workloads.cli", "serve", "--model", model, "--alias", "champion",
               "--port", str(self.port), "--endpoint-name", endpoint_name, "--workdir", str(workdir),
               "--capture-flush-seconds", "1", "--poll-seconds", "0", "--bootstrap-poll-seconds", "1"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        """The served version (GET /version) once /ping answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise QuickstartError(f"the endpoint exited ({self.proc.returncode}); see {self.log}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return dict(httpx.get(f"{self.url}/version", timeout=5).json())
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise QuickstartError(f"the endpoint was not ready after {timeout:.0f} s; see {self.log}")

    def captured_rows(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("mlops_capture_records_written"))

    def wait_captured(self, rows: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.captured_rows() < rows:
            if time.monotonic() > deadline:
                raise QuickstartError(f"capture wrote fewer than {rows} rows in {timeout:.0f} s; see {self.log}")
            time.sleep(0.3)

    def reload(self) -> dict[str, Any]:
        httpx.post(f"{self.url}/reload", timeout=120).raise_for_status()
        return dict(httpx.get(f"{self.url}/version", timeout=5).json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # flushes the capture buffer on the way out
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def send_traffic(endpoint_url: str, frame: pd.DataFrame, prefix: str, rows_per_request: int) -> dict[str, Any]:
    """Score `frame` in requests of `rows_per_request` rows, 8 at a time (client ids `<prefix>-<i>`);
    `request_ids`: each request's server id (its X-Request-Id answer), what capture records and labels join on."""
    chunks = [frame.iloc[i:i + rows_per_request] for i in range(0, len(frame), rows_per_request)]

    def post(i: int, client: httpx.Client) -> tuple[int, str]:
        body = {"dataframe_split": json.loads(chunks[i].to_json(orient="split", index=False))}
        response = client.post(f"{endpoint_url}/invocations", json=body, headers={"X-Request-Id": f"{prefix}-{i}"})
        return response.status_code, response.headers.get("x-request-id", "")

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        answers = list(pool.map(lambda i: post(i, client), range(len(chunks))))
    errors = sum(status != 200 for status, _ in answers)
    if errors:
        raise QuickstartError(f"{errors} of {len(answers)} scoring requests failed")
    return {"requests": len(answers), "rows": len(frame), "request_ids": [rid for _, rid in answers]}


def labels_for(frame: pd.DataFrame, request_ids: list[str], rows_per_request: int, target: str) -> pd.DataFrame:
    """Ground truth keyed the way the monitor joins it: the server's request id and the row within the request."""
    index = pd.RangeIndex(len(frame))
    return pd.DataFrame({"request_id": [request_ids[i // rows_per_request] for i in index],
                         "row": index % rows_per_request, "label": frame[target].to_numpy()})
