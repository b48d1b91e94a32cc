"""The per-flush summary: counts equal the full data's, a key-sorted uniform sample, written beside
each capture file once the monitor has cached its version's bins (and keyed as the monitor keys them)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from tests.monitoring.memory_s3 import MemoryS3
from tests.serving.helpers import small_frame
from workloads.capture.profiles import BinsSource
from workloads.capture.summary import MAX_UNSEEN, Bins, Summary, summary_key
from workloads.capture.writer import CaptureWriter
from workloads.monitoring import reference
from workloads.monitoring.drift import _bin_counts
from workloads.monitoring.profile import (
    ReferenceProfile,
    bins_key,
    category_counts,
    feature_profile_key,
    prediction_profile_key,
)
from workloads.monitoring.summaries import parse

TS = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
DIGEST = "d1g35t"
FEATURES = ["x0", "x1", "x2", "n", "plan"]


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    plan = rng.choice(["basic", "pro"] + [f"new-{i}" for i in range(2 * MAX_UNSEEN)], n).astype(object)
    plan[rng.random(n) < 0.05] = None
    return pa.table({"x": pa.array(x, from_pandas=True), "plan": pa.array(plan, type=pa.large_string()),
                     "_prediction": rng.random(n)})


def test_summary_counts_equal_the_full_datas_and_the_sample_is_sorted_and_uniform() -> None:
    table = _table(20_000, 1)
    edges = np.array([-1.0, -0.2, 0.0, 0.7, 1.5])
    bins = Bins({"x": edges, "_prediction": np.array([0.5])}, {"plan": ["basic", "pro", "absent"]}, "f", "p")
    summary = parse(Summary.of_table(table, bins, rate=0.05, rng=np.random.default_rng(2)).to_bytes())
    x = table.column("x").to_numpy(zero_copy_only=False)
    assert summary.nulls["x"] == np.isnan(x).sum()
    assert summary.bins["x"].tolist() == _bin_counts(np.sort(x[~np.isnan(x)]), edges).tolist()  # drift.py's bins
    expected = category_counts(table.column("plan").to_pandas())
    counted = summary.categories["plan"]
    assert counted.counts.tolist() == [expected["basic"], expected["pro"], 0]
    assert counted.nulls == table.column("plan").null_count
    assert len(counted.unseen) == MAX_UNSEEN and counted.other + sum(counted.unseen.values()) == \
        expected.drop(["basic", "pro"]).sum()
    keys = summary.sample[:, 0]
    assert (np.diff(keys) >= 0).all() and (keys < 0.05).all()
    assert abs(len(keys) - 1000) < 5 * np.sqrt(1000)  # Bernoulli(0.05) of 20,000 rows
    sampled = summary.sample[:, 1]
    assert np.isin(sampled[~np.isnan(sampled)], x).all()
    assert summary.rows == 20_000 and summary.columns == ["x", "_prediction", "plan"]


def _registry() -> SimpleNamespace:
    version = SimpleNamespace(tags={"mlops.dataset.digest": DIGEST, "mlops.dataset.uri": "s3://d/x"})
    return SimpleNamespace(get_model_version=lambda name, v: version)


def _cache_profiles(s3: MemoryS3) -> ReferenceProfile:
    """What the monitor does on its first run: profiles, and their bins beside them (profile.cached)."""
    from workloads.monitoring.profile import cached

    frame = small_frame(500, 3)
    profile = cached(s3, "b", feature_profile_key(DIGEST, FEATURES), lambda: ReferenceProfile.build(frame))
    cached(s3, "b", prediction_profile_key(DIGEST, "m", "7"),
           lambda: ReferenceProfile.build(pd.DataFrame({"_prediction": np.linspace(0, 1, 500)})))
    return profile


def test_a_summary_goes_beside_each_file_once_the_bins_are_cached() -> None:
    from mlflow.models import infer_signature

    s3, now = MemoryS3(), [0.0]
    signature = infer_signature(small_frame(5, 0), np.zeros((5, 2)))
    metadata = SimpleNamespace(get_input_schema=lambda: signature.inputs, get_output_schema=lambda: signature.outputs)
    source = BinsSource(s3, "b", _registry, retry_seconds=60, clock=lambda: now[0], start=lambda lookup: lookup())
    writer = CaptureWriter(s3, "b", "e", bins=source)
    writer.on_swap(None, SimpleNamespace(name="m", version="7", pyfunc=SimpleNamespace(metadata=metadata)))

    def flush(seed: int) -> None:
        assert writer.record(f"r{seed}", "m", "7", small_frame(50, seed), np.full((50, 2), 0.5), ts=TS)
        assert writer.flush() == 50

    flush(0)  # no bins yet: the file goes alone; the monitor will read it
    assert writer.stats.summaries_written == 0 and all(k.endswith(".parquet") for k in s3.objects)
    _cache_profiles(s3)
    flush(1)
    assert writer.stats.summaries_written == 0  # asked again only after retry_seconds
    now[0] = 61.0
    flush(2)
    assert writer.stats.summaries_written == 1
    (summary,) = [k for k in s3.objects if k.endswith(".summary")]
    parquet = summary.removesuffix(".summary") + ".parquet"
    assert summary_key(parquet) == summary and parquet in s3.objects
    merged = parse(s3.objects[summary])
    assert merged.rows == len(pd.read_parquet(io.BytesIO(s3.objects[parquet]))) == 50
    assert merged.features_key == feature_profile_key(DIGEST, FEATURES)
    assert merged.prediction_key == prediction_profile_key(DIGEST, "m", "7")
    assert sum(merged.bins["x0"]) + merged.nulls["x0"] == 50


def test_capture_keys_profiles_as_the_monitor_caches_them(monkeypatch) -> None:
    """reference.py stores the profiles; capture's key functions must name the same objects."""
    s3 = MemoryS3()
    env = SimpleNamespace(s3=s3, outputs=SimpleNamespace(capture_bucket="b"))
    champ = reference.Champion(name="m", version="7", run_id=None, features=FEATURES,
                               tags={"mlops.dataset.digest": DIGEST, "mlops.dataset.uri": "s3://d/x"})
    frame = small_frame(300, 4)
    reference.feature_profile(env, champ, frame)
    monkeypatch.setattr(reference, "_predictions", lambda champ, ref: ReferenceProfile.build(
        pd.DataFrame({"_prediction": np.linspace(0, 1, 300)})))
    reference.prediction_profile(env, champ, frame)
    for key in (feature_profile_key(DIGEST, FEATURES), prediction_profile_key(DIGEST, "m", "7")):
        assert key in s3.objects and bins_key(key) in s3.objects
    source = BinsSource(s3, "b", _registry, start=lambda lookup: lookup())
    bins = source.get("m", "7", FEATURES)
    assert bins is not None and set(bins.numeric) == {"x0", "x1", "x2", "n", "_prediction"}
    assert bins.categorical == {"plan": ["basic", "plus", "pro"]}
    profile = ReferenceProfile.build(frame)
    assert np.array_equal(bins.numeric["x0"], profile.numeric["x0"].edges)  # the same floats
