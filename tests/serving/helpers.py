"""Helpers for tests that run `mlops serve` (tests/serving and the serving drills)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from workloads.environment import Environment
from workloads.layout import capture_prefix

# What a workload could otherwise pick up from the test process instead of its --workdir.
_WIRING = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """This process's environment without the stack wiring: a served endpoint must find its stack
    through `--workdir` alone."""
    env = {k: v for k, v in os.environ.items() if k not in _WIRING and not k.startswith("MLOPS_")}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


class Endpoint:
    """One `mlops serve` process of ours on a free 127.0.0.1 port; stopped by its pid."""

    def __init__(self, model: str, workdir: Path, *extra: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlops = shutil.which("mlops", path=str(Path(sys.executable).parent))
        self.log = log
        self.proc = subprocess.Popen(
            [mlops, "serve", "--model", model, "--port", str(self.port), "--workdir", str(workdir),
             "--bootstrap-poll-seconds", "0.5", "--poll-seconds", "0", *extra],
            env={**child_env(), **(env or {})}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mlops serve exited:\n{log.read_text()[-3000:]}"
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"mlops serve not healthy in 60 s:\n{log.read_text()[-3000:]}")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.get("/ping").status_code == 200:
                return
            time.sleep(0.2)
        self.stop()  # a server that never got ready must not outlive its test
        raise AssertionError(f"not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def metric(self, name: str) -> float:
        """A metric's value; `name` may carry labels, e.g. 'x_total{path="fast"}' (a subset of the
        sample's labels: every sample also carries `mlops_endpoint`)."""
        from prometheus_client.parser import text_string_to_metric_families

        base, _, rest = name.partition("{")
        wanted = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
        wanted = {k: v.strip('"') for k, v in wanted.items()}
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == base and wanted.items() <= sample.labels.items():
                    return float(sample.value)
        raise AssertionError(f"metric {name} not exposed")

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def read_captures(env: Environment, endpoint: str) -> pd.DataFrame:
    """Every captured row of an endpoint in the environment's capture bucket."""
    s3, bucket = env.s3, env.outputs.capture_bucket
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=capture_prefix(endpoint)) for o in page.get("Contents", [])
        if o["Key"].endswith(".parquet")]  # not the summaries beside them
    frames = [pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=k)["Body"].read())) for k in keys]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def start_moto(port: int, log: Path) -> subprocess.Popen:
    """A moto S3 server of this test's own on 127.0.0.1:`port` (stop it by its pid)."""
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("moto_server did not start")


def private_store(env: Environment, port: int, bucket: str, workdir: Path) -> Environment:
    """`env` with its capture bucket on a moto server of the test's own (127.0.0.1:`port`, so the test
    can take it away): the bucket created, and outputs.json written to `workdir` for `--workdir`."""
    outputs = env.outputs.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{port}", "capture_bucket": bucket})
    private = Environment(outputs, workdir)
    private.s3.create_bucket(Bucket=bucket)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "outputs.json").write_text(outputs.model_dump_json())
    return private


def tree_rss_kib(root: int) -> int:
    """VmRSS of `root` and every descendant, in KiB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


# --- a small model saved locally (in-process tests, no servers) --------------------------------

SMALL_NUMERIC = ["x0", "x1", "x2"]
SMALL_NAMES = SMALL_NUMERIC + ["n", "plan"]


def small_frame(n: int, seed: int) -> pd.DataFrame:
    """Rows for the small model: three doubles, a long and a string."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=SMALL_NUMERIC)
    frame["n"] = rng.integers(0, 5, size=n)
    frame["plan"] = rng.choice(["basic", "plus", "pro"], size=n).astype(object)
    return frame
