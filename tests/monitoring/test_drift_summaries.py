"""Drift from capture summaries against drift from the full data (issue 16, section 2).

Traffic goes through the real capture writer (signature schema, summaries on the bins the monitor
cached) into an in-memory S3, and the window is read by the monitor's reader. Asserted: PSI,
chi-square and null rates from merged summaries are IDENTICAL to the full data's; KS from the
window's sample is within its stated DKW bound; a small window is read exactly; files without a
usable summary, and files across the window's start, are read and merged.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tests.monitoring.memory_s3 import MemoryS3
from workloads.capture.profiles import BinsSource
from workloads.capture.writer import CaptureWriter
from workloads.data.sample import generate
from workloads.monitoring import summaries
from workloads.monitoring.drift import DriftReport, compare
from workloads.monitoring.profile import ReferenceProfile, cached, feature_profile_key, prediction_profile_key
from workloads.monitoring.reference import Champion
from workloads.monitoring.window import read_window

NOW = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)
DIGEST = "d1g35t"
BUCKET = "capture"


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return generate(5000, seed=1).drop(columns=["customer_id", "churned"])


@pytest.fixture(scope="module")
def signature(reference: pd.DataFrame):  # noqa: ANN201
    from mlflow.models import infer_signature

    return infer_signature(reference, np.zeros(len(reference)))


class Endpoint:
    """The monitor's profiles cached in `s3`, and a capture writer for model m v`version` of `features`."""

    def __init__(self, s3: MemoryS3, reference: pd.DataFrame, signature, version: str = "1") -> None:  # noqa: ANN001
        self.s3, self.version = s3, version
        self.champion = Champion(name="m", version=version, run_id=None, features=list(reference.columns),
                                 tags={"mlops.dataset.digest": DIGEST, "mlops.dataset.uri": "s3://d/x"})
        self.profile = cached(s3, BUCKET, feature_profile_key(DIGEST, list(reference.columns)),
                              lambda: ReferenceProfile.build(reference))
        predictions = pd.DataFrame({"_prediction": _predict(reference)})
        self.predictions = cached(s3, BUCKET, prediction_profile_key(DIGEST, "m", version),
                                  lambda: ReferenceProfile.build(predictions))
        registry = SimpleNamespace(get_model_version=lambda name, v: SimpleNamespace(tags=self.champion.tags))
        self.bins = BinsSource(s3, BUCKET, lambda: registry, start=lambda lookup: lookup())
        self.signature = signature

    def capture(self, frame: pd.DataFrame, files: int, at: datetime = NOW - timedelta(minutes=30),
                summaries: bool = True) -> None:
        """`frame` as served traffic in `files` flushes, one request per 10 rows, at `at`."""
        writer = CaptureWriter(self.s3, BUCKET, "e", bins=self.bins if summaries else None)
        metadata = SimpleNamespace(get_input_schema=lambda: self.signature.inputs,
                                   get_output_schema=lambda: self.signature.outputs)
        writer.on_swap(None, SimpleNamespace(name="m", version=self.version, pyfunc=SimpleNamespace(metadata=metadata)))
        for chunk in np.array_split(np.arange(len(frame)), files):
            rows = frame.iloc[chunk]
            sizes = [10] * (len(rows) // 10) + ([len(rows) % 10] if len(rows) % 10 else [])
            ids = [f"r{chunk[0]}-{i}" for i in range(len(sizes))]
            assert writer.record_batch(ids, sizes, "m", self.version, rows, _predict(rows), ts=at)
            writer.flush()


def _predict(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model: a fixed function of two features."""
    return 1 / (1 + np.exp(-(frame["monthly_charges"].fillna(0).to_numpy() - 70) / 20))


def _traffic(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    frame = generate(n, seed=seed, shift=shift).drop(columns=["customer_id", "churned"])
    # Drift that grows along the window: a sample taken from only some files would miss it.
    frame["tenure_months"] = frame["tenure_months"] + np.linspace(0, 12, n).round()
    return frame


def _monitor(endpoint: Endpoint, exact_rows: int, **window: object) -> tuple[DriftReport, object]:
    opened = read_window(endpoint.s3, BUCKET, "e", **{"hours": 24, "now": NOW, **window})
    current = opened.current(endpoint.champion, endpoint.profile, endpoint.predictions, exact_rows)
    return compare(endpoint.profile, current, prediction_profile=endpoint.predictions), opened


def _full(endpoint: Endpoint, frame: pd.DataFrame) -> DriftReport:
    return compare(endpoint.profile, frame.assign(_prediction=_predict(frame)), prediction_profile=endpoint.predictions)


def _features(report: DriftReport) -> dict:
    return {f.name: f for f in [*report.features, report.prediction]}


def test_psi_chi_square_and_null_rates_from_merged_summaries_are_identical_to_the_full_data(
        reference, signature, monkeypatch) -> None:
    monkeypatch.setattr(summaries, "SAMPLE_ROWS", 1500)  # below capture's 5% of the window's 40,000 rows
    s3 = MemoryS3()
    endpoint = Endpoint(s3, reference, signature)
    frame = _traffic(40_000, seed=2, shift=0.5)
    endpoint.capture(frame, files=16)
    s3.read_keys.clear()
    merged, opened = _monitor(endpoint, exact_rows=10_000)
    assert not [k for k in s3.read_keys if k.endswith(".parquet")], "a summarised window reads no capture file"
    full = _full(endpoint, frame)
    assert len(opened) == 40_000 and not merged.exact and full.exact
    got, want = _features(merged), _features(full)
    for name, f in want.items():
        g = got[name]
        assert g.psi == f.psi, name  # identical, not close
        assert (g.n_current, g.null_rate_current) == (f.n_current, f.null_rate_current), name
        if f.kind == "categorical":
            assert (g.statistic, g.p_value, g.unseen_categories) == (f.statistic, f.p_value, f.unseen_categories)
        else:
            assert g.sample_size is not None and abs(g.sample_size - 1500) < 6 * math.sqrt(1500)
            assert g.ks_error == pytest.approx(math.sqrt(math.log(40) / (2 * g.sample_size)))
            assert abs(g.statistic - f.statistic) <= g.ks_error, name
    assert merged.max_psi == full.max_psi


def test_ks_from_the_window_sample_stays_within_its_dkw_bound(reference, signature, monkeypatch) -> None:
    monkeypatch.setattr(summaries, "SAMPLE_ROWS", 1500)
    misses, cases = 0, 0
    for seed in range(4):
        s3 = MemoryS3()
        endpoint = Endpoint(s3, reference, signature)
        frame = _traffic(20_000, seed=10 + seed, shift=0.3 * seed)
        endpoint.capture(frame, files=10)
        merged, full = _features(_monitor(endpoint, exact_rows=5000)[0]), _features(_full(endpoint, frame))
        for name, f in full.items():
            if f.kind == "numeric":
                cases += 1
                misses += abs(merged[name].statistic - f.statistic) > merged[name].ks_error
    # DKW holds with probability >= 95% per feature; it is conservative, so misses are rare.
    assert cases == 28 and misses <= 1, (misses, cases)


def test_a_small_window_is_read_exactly(reference, signature) -> None:
    s3 = MemoryS3()
    endpoint = Endpoint(s3, reference, signature)
    frame = _traffic(3000, seed=3, shift=1.0)
    endpoint.capture(frame, files=3)
    exact, opened = _monitor(endpoint, exact_rows=1_000_000)
    full = _full(endpoint, frame)
    assert exact.exact and exact.model_dump() == full.model_dump()
    assert set(opened.sample.columns) == {*reference.columns, "_prediction"} and len(opened.sample) == 3000


def test_files_without_a_usable_summary_are_read_and_merged(reference, signature, monkeypatch) -> None:
    """Before the bins were cached (no summary) and from another version (other prediction bins)."""
    monkeypatch.setattr(summaries, "SAMPLE_ROWS", 2000)
    s3 = MemoryS3()
    endpoint = Endpoint(s3, reference, signature)
    old = _traffic(6000, seed=4)
    endpoint.capture(old.iloc[:3000], files=3, summaries=False)
    Endpoint(s3, reference, signature, version="2").capture(old.iloc[3000:], files=3)
    frame = _traffic(12_000, seed=5, shift=0.7)
    endpoint.capture(frame, files=6)
    merged, opened = _monitor(endpoint, exact_rows=5000)
    everything = pd.concat([old, frame], ignore_index=True)
    full = _full(endpoint, everything)
    for name, f in _features(full).items():
        assert _features(merged)[name].psi == f.psi, name
    assert len(opened) == 18_000
    described = summaries_described(opened)
    assert described == (12, 9)  # 12 files; 9 summarised, of which 3 on version 2's prediction bins


def summaries_described(opened) -> tuple[int, int]:  # noqa: ANN001
    from workloads.monitoring.window import describe

    span = describe(opened, hours=24, records=None, now=NOW)
    return span["files"], span["summarised_files"]


def test_files_across_the_window_start_are_trimmed_exactly(reference, signature, monkeypatch) -> None:
    monkeypatch.setattr(summaries, "SAMPLE_ROWS", 2000)
    s3 = MemoryS3()
    endpoint = Endpoint(s3, reference, signature)
    before, inside = _traffic(4000, seed=6), _traffic(8000, seed=7, shift=0.5)
    endpoint.capture(before, files=2, at=NOW - timedelta(hours=2, minutes=10))  # outside a 2-hour window
    endpoint.capture(inside, files=4, at=NOW - timedelta(minutes=5))
    # one flush holding both sides of the window's start
    edge = CaptureWriter(s3, BUCKET, "e", bins=endpoint.bins)
    edge.on_swap(None, SimpleNamespace(name="m", version="1", pyfunc=SimpleNamespace(metadata=SimpleNamespace(
        get_input_schema=lambda: signature.inputs, get_output_schema=lambda: signature.outputs))))
    straddle = _traffic(1000, seed=8)
    start = NOW - timedelta(hours=2)
    for i, at in enumerate((start - timedelta(seconds=1), start + timedelta(seconds=1))):
        part = straddle.iloc[i * 500:(i + 1) * 500]
        assert edge.record_batch([f"edge-{i}"], [500], "m", "1", part, _predict(part), ts=at)
    edge.flush()  # same hour partition: one file, half of it in the window
    merged, opened = _monitor(endpoint, exact_rows=5000, hours=2)
    assert len(opened) == 8000 + 500
    full = _full(endpoint, pd.concat([inside, straddle.iloc[500:]], ignore_index=True))
    for name, f in _features(full).items():
        assert _features(merged)[name].psi == f.psi, name


def test_a_records_window_keeps_the_newest_rows(reference, signature) -> None:
    s3 = MemoryS3()
    endpoint = Endpoint(s3, reference, signature)
    older, newer = _traffic(600, seed=9), _traffic(400, seed=10, shift=1.0)
    endpoint.capture(older, files=1, at=NOW - timedelta(hours=5))
    endpoint.capture(newer, files=1, at=NOW - timedelta(hours=1))
    exact, opened = _monitor(endpoint, exact_rows=10_000, records=700)
    assert len(opened) == 700
    # the old reader's order: by capture time, then row within request (stable); the newest 700
    rows = pd.concat([older.assign(_ts=1, _row=np.arange(600) % 10), newer.assign(_ts=2, _row=np.arange(400) % 10)])
    newest = rows.sort_values(["_ts", "_row"], kind="stable").tail(700).drop(columns=["_ts", "_row"])
    full = _full(endpoint, newest.reset_index(drop=True))
    for name, f in _features(full).items():
        assert _features(exact)[name].psi == f.psi and _features(exact)[name].statistic == f.statistic, name


def test_a_second_run_reads_the_hours_the_first_rolled_up(reference, signature, monkeypatch) -> None:
    """Past hours merged once (rollups.py): later runs read one object per hour, with the same drift;
    a file arriving late in a rolled-up hour is added, a roll-up naming a vanished file is not used."""
    monkeypatch.setattr(summaries, "SAMPLE_ROWS", 1500)
    s3 = MemoryS3()
    endpoint = Endpoint(s3, reference, signature)
    frames = [_traffic(9000, seed=20 + h, shift=0.2 * h) for h in range(4)]
    for h, frame in enumerate(frames):  # hours 09, 10 and 11 wholly inside a 4-hour window; 12 still open
        endpoint.capture(frame, files=12, at=NOW - timedelta(hours=3 - h, minutes=20))

    def run() -> tuple[DriftReport, dict, int]:
        gets = s3.gets
        report, opened = _monitor(endpoint, exact_rows=5000, hours=4)
        return report, describe_window(opened), s3.gets - gets

    first, span, cold = run()
    rolled = [k for k in s3.objects if "/rollups/" in k]
    assert len(rolled) == 3 and span["rollups"] == 0
    second, span, warm = run()
    assert span["rollups"] == 3 and span["files"] == 48 and warm < cold / 2, (warm, cold)
    full = _full(endpoint, pd.concat(frames, ignore_index=True))
    for report in (first, second):
        for name, f in _features(full).items():
            assert _features(report)[name].psi == f.psi, name
            if f.kind == "numeric":
                assert abs(_features(report)[name].statistic - f.statistic) <= _features(report)[name].ks_error

    late = _traffic(3000, seed=30, shift=1.0)
    endpoint.capture(late, files=1, at=NOW - timedelta(hours=2, minutes=50))  # into the rolled-up hour 10
    third, span, _ = run()
    assert span["rollups"] == 3 and span["files"] == 49
    full = _full(endpoint, pd.concat([*frames, late], ignore_index=True))
    assert all(_features(third)[n].psi == f.psi for n, f in _features(full).items())

    gone = next(k for k in s3.objects if k.startswith("captures/") and "hour=09" in k and k.endswith(".parquet"))
    del s3.objects[gone], s3.objects[gone.removesuffix(".parquet") + ".summary"]  # expired
    _, span, _ = run()
    assert span["files"] == 48 and span["rows"] == 36_000 + 3000 - 9000 // 12


def describe_window(opened) -> dict:  # noqa: ANN001
    from workloads.monitoring.window import describe

    return describe(opened, hours=4, records=None, now=NOW)
