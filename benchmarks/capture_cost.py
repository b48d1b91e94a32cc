"""Capture's flush cost per row, in process: what the per-flush summaries add (issue 16, section 2).

    .venv/bin/python -m benchmarks.serving --capture-cost     # this only; the full serving run prints it too

The flush (table, Parquet and, after, the summary) of 20,000 buffered rows into a store that
discards them, best of 5: with types inferred (no signature), with the signature's schema, and
with the summary as well; records as the fast path buffers them (32 one-row requests, or one
100-row request, per micro-batch). The full serving run relates the summaries' cost to the server
CPU per request it measured.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from workloads.environment import Environment

TAGS = {"mlops.dataset.digest": "bench-serving", "mlops.dataset.uri": "s3://bench/serving"}


def _profiles(name: str, version: str) -> tuple:
    from benchmarks.serving import NUMERIC, make_data
    from workloads.monitoring.profile import ReferenceProfile
    from workloads.monitoring.reference import Champion

    champ = Champion(name=name, version=version, run_id=None, tags=TAGS, features=[*NUMERIC, "plan"])
    predictions = ReferenceProfile.build(pd.DataFrame({"_prediction": np.linspace(0, 1, 2000)}))
    return champ, ReferenceProfile.build(make_data(2000, 0)), predictions


def cache_bins(env: Environment | None, name: str, version: str) -> object:
    """What a first monitoring run leaves: the served version's profiles and their bins in the
    environment's capture bucket (none: only built); returns the bins."""
    from workloads.monitoring.current import champion_bins
    from workloads.monitoring.profile import cached, feature_profile_key, prediction_profile_key

    champ, profile, predictions = _profiles(name, version)
    if env is not None:
        for key, value in TAGS.items():
            env.mlflow_client().set_model_version_tag(name, version, key, value)
        digest, bucket = champ.dataset_digest, env.outputs.capture_bucket
        cached(env.s3, bucket, feature_profile_key(digest, champ.features), lambda: profile)
        cached(env.s3, bucket, prediction_profile_key(digest, name, version), lambda: predictions)
    return champion_bins(champ, profile, predictions)


class _Discard:
    """A store that takes every object and keeps nothing (the flush's own cost, no I/O)."""

    def put_object(self, **_: object) -> None:
        pass


def capture_cost(bins: object, repeat: int = 5) -> list[tuple[int, str, float]]:
    """(rows per request, mode, microseconds per captured row) of capture's flush, in process."""
    from types import SimpleNamespace

    from mlflow.models import infer_signature

    from benchmarks.serving import make_data
    from workloads.capture.writer import CaptureWriter

    frame, rows = make_data(20_000, 1), 20_000
    signature = infer_signature(frame, np.zeros(rows, dtype=int))
    metadata = SimpleNamespace(get_input_schema=lambda: signature.inputs, get_output_schema=lambda: signature.outputs)
    model = SimpleNamespace(name="m", version="1", pyfunc=SimpleNamespace(metadata=metadata))
    known = SimpleNamespace(get=lambda *_: bins)
    out = []
    for per_request in (1, 100):
        # the fast path records a micro-batch at a time: 32 one-row requests, or one 100-row request
        per_record = 32 if per_request == 1 else 100
        for mode in ("inferred types", "signature schema", "schema + summary"):
            writer = CaptureWriter(_Discard(), "b", "e", max_buffer_rows=rows, bins=known if "summary" in mode else None)
            if mode != "inferred types":
                writer.on_swap(None, model)
            best = float("inf")
            for _ in range(repeat):
                for start in range(0, rows, per_record):
                    part = frame.iloc[start:start + per_record]
                    sizes = [per_request] * (len(part) // per_request)
                    writer.record_batch([f"r{start}-{i}" for i in range(len(sizes))], sizes, "m", "1", part,
                                        np.ones(len(part)))
                began = time.perf_counter()
                assert writer.flush() == rows
                best = min(best, time.perf_counter() - began)
            out.append((per_request, mode, best / rows * 1e6))
    return out


def print_capture_cost(costs: list[tuple[int, str, float]], cpu_ms_per_request: dict[int, float]) -> None:
    print("\ncapture flush cost in process (us per captured row, best of 5, 20,000 rows per flush):")
    by = {(r, m): us for r, m, us in costs}
    for (rows, mode), us in by.items():
        print(f"  {rows:3d}-row requests  {mode:18s} {us:8.2f}")
    for rows in (1, 100):
        added = by[(rows, "schema + summary")] - by[(rows, "signature schema")]
        line = f"  summaries add {added:.2f} us per row with {rows}-row requests"
        if rows in cpu_ms_per_request:
            share = 100 * added * rows / (cpu_ms_per_request[rows] * 1000)
            line += f" = {share:.2f}% of the {cpu_ms_per_request[rows]:.2f} ms server CPU per request measured above"
        print(line)
