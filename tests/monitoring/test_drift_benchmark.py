"""The drift benchmark runs at a tiny size (so it cannot rot); no timing assertions."""

from __future__ import annotations

from benchmarks import drift


def test_drift_benchmark_runs_tiny_and_statistics_match(capsys) -> None:
    assert drift.main(["--rows", "2000", "--numeric", "4", "--categorical", "2", "--evidently-rows", "0"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "numpy" in out
    assert "(OK)" in out and "MISMATCH" not in out
    for method in ("ours: compare", "ours: profile", "scipy loop", "sort bound"):
        assert f"| {method}" in out
