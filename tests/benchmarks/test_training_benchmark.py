"""The training benchmark runs at a tiny size so it can't rot (no timing assertions)."""

import os

from benchmarks.training import main


def test_training_benchmark_runs_tiny(capsys) -> None:
    assert main(["--rows", "300", "--repeat", "1", "--no-quickstart"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "scikit-learn" in out
    assert "speedup all cores vs 1 core:" in out
    one_core = next(line for line in out.splitlines() if line.startswith("1 core"))
    assert one_core.split()[2] == "1", "the one-core run was not pinned to one CPU"
    all_cores = next(line for line in out.splitlines() if line.startswith("all cores"))
    assert all_cores.split()[2] == str(len(os.sched_getaffinity(0)))
    # Pinning changes the speed, never the result.
    assert "same candidates and cv scores in every run: yes" in out
