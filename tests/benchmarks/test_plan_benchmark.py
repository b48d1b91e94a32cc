"""The plan benchmark runs at a tiny size so it can't rot (no timing assertions)."""

from benchmarks.plan import config_with_endpoints, linear_fit, main


def test_plan_benchmark_runs_tiny(capsys) -> None:
    main(["--stacks", "ci", "--endpoints", "1", "3", "--repeat", "1", "--no-cli"])
    out = capsys.readouterr().out
    assert "machine:" in out and "ms per endpoint" in out
    assert out.count("\n        1 ") == 1 and "ci " in out


def test_generated_config_declares_n_endpoints() -> None:
    endpoints = config_with_endpoints(7)["mlops-platform:serving"]["endpoints"]
    assert [e["name"] for e in endpoints] == [f"model-{i}" for i in range(7)]


def test_linear_fit_recovers_a_line() -> None:
    slope, intercept, r2 = linear_fit([1, 2, 3, 4], [3.0, 5.0, 7.0, 9.0])
    assert abs(slope - 2) < 1e-12 and abs(intercept - 1) < 1e-12 and abs(r2 - 1) < 1e-12
