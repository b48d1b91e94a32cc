"""The serving benchmark runs at a tiny size so it can't rot (no timing assertions)."""

import shutil

import pytest

from benchmarks.serving import _ms, main

pytestmark = pytest.mark.servers


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_serving_benchmark_runs_tiny(capsys, tmp_path) -> None:
    out_json = tmp_path / "serving.json"
    assert main(["--quick", "--duration", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "in-process predict ceiling" in out
    for server in ("ours+capture", "ours", "stock"):
        assert f"\n{server} " in out
    assert "predictions identical across servers (100-row request, response bytes): True" in out
    assert out_json.exists()


def test_wrk_durations_parse() -> None:
    assert _ms("512.00us") == 0.512 and _ms("1.50ms") == 1.5 and _ms("2.00s") == 2000.0
