"""Drill: the capture bucket is unreachable for a minute while traffic keeps coming.

The endpoint captures to a moto_server of this test's own (so it can be taken away). During
the outage the store is first frozen (SIGSTOP: connections hang until the client's timeout),
then killed (connections refused); then a fresh moto starts on the same port (moto keeps
nothing: the bucket is created again). Asserted: every scoring request during the whole time
gets a 200; failed writes and dropped records show in /metrics; capture resumes by itself
(records sent after the recovery appear in the bucket, no restart of the endpoint); and every
row is accounted for: written + dropped = rows scored. The monitor's profile bins are in the
store from the start, so capture writes a summary beside each file: after the recovery every
file has one, counting exactly its rows, and no summary is without its file.

`tests/serving/test_serve.py::test_capture_survives_s3_outage_and_resumes` covers the
mechanism with a short refused-connection outage; this drill is the sustained version.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.drills.conftest import features
from tests.serving.helpers import Endpoint, free_port, private_store, read_captures, start_moto
from workloads.capture.summary import summary_key
from workloads.data.sample import generate
from workloads.environment import Environment, StackOutputs
from workloads.layout import capture_prefix
from workloads.monitoring.profile import ReferenceProfile, cached, feature_profile_key, prediction_profile_key
from workloads.monitoring.reference import resolve_champion
from workloads.monitoring.summaries import parse

pytestmark = pytest.mark.servers
# The issue says a minute; 30 s (half frozen, half refused) exercises the same paths: capture has no
# time-dependent state (no backoff, no circuit breaker), only a flush every 0.5 s that either hangs
# until the client's 5 s read timeout or is refused at once, and at ~40 rows/s the 300-row buffer
# overflows after ~8 s, so most of the outage runs the drop path. A longer outage repeats the same
# iterations and would cost the suite another 30 s.
OUTAGE_SECONDS = 30.0
BUFFER_ROWS = 300  # the endpoint's capture bound, small so the outage overflows it
BUCKET = "drill-outage-capture"
ENDPOINT = "drill-capture-outage"


class Traffic(threading.Thread):
    """1-row scoring requests, one every few milliseconds, until stopped; records every status."""

    def __init__(self, ep: Endpoint, pace: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.ep, self.pace = ep, pace
        self.rows = features(generate(500, seed=14))
        self.statuses: list[tuple[str, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.ep.url, timeout=30) as client:
            i = 0
            while not self.halt.is_set():
                rid = f"t-{i}"
                body = self.rows.iloc[[i % len(self.rows)]].to_json(orient="split", index=False)
                try:
                    r = client.post("/invocations", content=f'{{"dataframe_split": {body}}}',
                                    headers={"Content-Type": "application/json", "X-Request-Id": rid})
                    status, rid = r.status_code, r.headers["X-Request-Id"]  # the server's id: what capture records
                except httpx.HTTPError:
                    status = -1
                self.statuses.append((rid, status))
                i += 1
                time.sleep(self.pace)

    def sent_after(self, n: int) -> set[str]:
        return {rid for rid, _ in self.statuses[n:]}


def _wait(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _cache_bins(env: Environment, model: dict) -> None:
    """What the monitor's first run leaves in the capture bucket: the profiles and their bins."""
    with env.tracking():
        champ = resolve_champion(env.mlflow_client(), model["name"], "champion")
    reference = features(generate(800, seed=5))
    cached(env.s3, BUCKET, feature_profile_key(champ.dataset_digest, champ.features),
           lambda: ReferenceProfile.build(reference[champ.features]))
    cached(env.s3, BUCKET, prediction_profile_key(champ.dataset_digest, champ.name, champ.version),
           lambda: ReferenceProfile.build(pd.DataFrame({"_prediction": [0.1, 0.5, 0.9]})))


def _summaries(env: Environment) -> tuple[int, int, list[str]]:
    """(capture files, files with a summary counting exactly their rows, summaries without a file)."""
    pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=capture_prefix(ENDPOINT))
    keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
    files = [k for k in keys if k.endswith(".parquet")]
    body = lambda k: env.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()  # noqa: E731
    matched = [k for k in files if summary_key(k) in keys
               and parse(body(summary_key(k))).rows == len(pd.read_parquet(io.BytesIO(body(k))))]
    orphans = [k for k in keys if k.endswith(".summary") and k.removesuffix(".summary") + ".parquet" not in keys]
    return len(files), len(matched), orphans


def test_capture_bucket_unreachable_then_back(churn_model: dict, local_stack: StackOutputs, tmp_path: Path) -> None:
    port = free_port()
    moto = start_moto(port, tmp_path / "moto.log")
    outage = private_store(Environment(local_stack), port, BUCKET, tmp_path / "wd")
    _cache_bins(outage, churn_model)
    ep = Endpoint(churn_model["name"], outage.workdir, "--endpoint-name", ENDPOINT, "--capture-flush-seconds", "0.5",
                  "--capture-max-buffer-rows", str(BUFFER_ROWS), log=tmp_path / "serve.log")
    traffic = Traffic(ep)
    try:
        ep.wait_ready()
        traffic.start()
        _wait(lambda: ep.metric("mlops_capture_records_written_total") >= 20, 20, "the first captures")
        _wait(lambda: _summaries(outage)[1] > 0, 20, "the first summary (capture has the bins)")

        moto.send_signal(signal.SIGSTOP)  # frozen: writes hang until the client gives up
        time.sleep(OUTAGE_SECONDS / 2)
        assert ep.metric("mlops_capture_flush_errors_total") > 0
        moto.kill()  # gone: writes are refused
        moto.wait(10)
        time.sleep(OUTAGE_SECONDS / 2)
        assert ep.client.get("/ping").status_code == 200
        dropped = ep.metric("mlops_capture_records_dropped_total")
        assert dropped > 0, "the outage outlasted the buffer: records beyond it must be counted as dropped"
        assert ep.metric("mlops_capture_buffered_rows") <= BUFFER_ROWS

        written_before = ep.metric("mlops_capture_records_written_total")
        moto = start_moto(port, tmp_path / "moto.log")  # same port, empty store
        outage.s3.create_bucket(Bucket=BUCKET)
        _wait(lambda: ep.metric("mlops_capture_records_written_total") > written_before, 20,
              "the first write after the recovery")
        # Until that first flush the buffer was full, so records in between may be dropped (and counted);
        # everything sent from here on must arrive.
        recovered_at = len(traffic.statuses)
        _wait(lambda: len(traffic.statuses) > recovered_at + 100, 60, "traffic after the recovery")
        after = traffic.sent_after(recovered_at)
        _wait(lambda: after <= set(read_captures(outage, ENDPOINT).get("_request_id", [])), 30,
              "records sent after the recovery to reach the bucket")
    finally:
        traffic.halt.set()
        traffic.join(30)

    try:
        failed = [(rid, status) for rid, status in traffic.statuses if status != 200]
        assert failed == [], f"{len(failed)} of {len(traffic.statuses)} requests failed: {failed[:10]}"
        _wait(lambda: ep.metric("mlops_capture_buffered_rows") == 0, 30, "the buffer to drain")
        written = ep.metric("mlops_capture_records_written_total")
        dropped = ep.metric("mlops_capture_records_dropped_total")
        assert written + dropped == len(traffic.statuses), (written, dropped, len(traffic.statuses))
        # The new store holds what was written since it came back (the old one's content died with it).
        captured = read_captures(outage, ENDPOINT)
        assert captured["_request_id"].is_unique and len(captured) >= len(after)
        files, summarised, orphans = _summaries(outage)
        assert files and summarised == files and orphans == [], (files, summarised, orphans)
    finally:
        ep.stop()
        moto.kill()
        moto.wait(10)
