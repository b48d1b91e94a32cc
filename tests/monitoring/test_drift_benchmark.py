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


def test_scale_benchmark_runs_tiny_and_summaries_match_the_full_data(capsys) -> None:
    from benchmarks import drift_scale

    assert drift_scale.main(["--window-rows", "40000", "--files", "2", "--check-rows", "20000", "--check-files", "2",
                             "--reference-rows", "5000", "--numeric", "4", "--categorical", "2",
                             "--exact-rows", "5000", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "| check, 1 run (full data kept) | 20,000 | 2 (0) |" in out
    assert "| first run (every summary read) | 40,000 | 2 (0) |" in out
    assert "| next runs (past hours rolled up) | 40,000 | 2 (2) |" in out
    assert "PSI identical True, chi-square identical True, null rates identical True" in out
