"""Benchmark: monitoring at scale from capture summaries (issue 16, section 2).

    .venv/bin/python -m benchmarks.drift_scale            # a 100,000,000-row window in 2,000 files; 1M-row check
    .venv/bin/python -m benchmarks.drift_scale --window-rows 200000 --files 4 --check-rows 40000 \\
        --check-files 4 --reference-rows 20000 --exact-rows 10000         # tiny (tests)

What runs, and what is generated (nothing here is a stand-in for the monitor's code):
- a store of its own: moto_server on 127.0.0.1 (an S3 API over HTTP, as in the local stack). It holds
  what capture and the monitor leave in the capture bucket: the reference profiles and their bins
  (cached by `profile.cached`, as the monitor does), and one summary per capture file;
- the window's traffic is generated file by file (`benchmarks.drift.make_table`: the current, shifted
  distribution; `window rows / files` rows each, capture's default flush size at 2,000 files) and
  summarised by capture's own `Summary.of_table` on those bins: counts, nulls, the 5% key-sorted
  sample. The Parquet files are not written: the monitor does not read them when summaries exist
  (tests/monitoring/test_drift_summaries.py checks that), and 100M rows would not fit this disk;
- the monitor runs in a fresh process: the cached reference profile is loaded (timed apart: once per
  run, the same for any traffic), then the window is listed, its summaries merged (`read_window`,
  `CapturedWindow.current`) and compared (`drift.compare`). Peak memory is that process's VmHWM
  (imports and profile included). The first run reads every summary and rolls the 23 past hours
  up (workloads/monitoring/rollups.py); the next runs (an hourly CronJob's steady state) read 23
  roll-ups and the open hour's summaries: their seconds are the best of `--repeat` processes (the
  machine is shared), peak memory the largest. The store runs on the same 2 cores: each run's CPU
  seconds are shown for the monitor process and for moto_server (its share would be S3's in a cluster);
- check: a window small enough to keep whole in memory goes the same way (summaries forced by
  `--exact-rows`) and its drift is compared with `drift.compare` on the full data: PSI, chi-square
  and null rates must be identical, each KS within its stated DKW bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.drift import make_table
from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "capture"
NOW = datetime(2026, 6, 1, 12, 30, tzinfo=UTC)
DIGEST = "benchdigest"


def predict(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model's score: a logistic function of a shifted feature."""
    return 1 / (1 + np.exp(-(frame["num_01"].to_numpy() - 0.5)))


def champion(features: list[str]) -> Any:
    from workloads.monitoring.reference import Champion

    return Champion(name="bench", version="1", run_id=None, features=features,
                    tags={"mlops.dataset.digest": DIGEST, "mlops.dataset.uri": "s3://data/bench"})


def start_store() -> tuple[subprocess.Popen, str]:
    """moto_server on a free 127.0.0.1 port, with the capture bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            client(url).create_bucket(Bucket=BUCKET)
            return proc, url
        except Exception:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.3)


def client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=Config(max_pool_connections=16))


def cache_profiles(s3: Any, reference: pd.DataFrame) -> tuple[Any, Any, Any]:
    """What the monitor's first run leaves: both profiles and their bins; returns them and the bins."""
    from workloads.monitoring.current import champion_bins
    from workloads.monitoring.profile import (
        ReferenceProfile,
        cached,
        feature_profile_key,
        prediction_profile_key,
    )

    champ = champion(list(reference.columns))
    profile = cached(s3, BUCKET, feature_profile_key(DIGEST, champ.features), lambda: ReferenceProfile.build(reference))
    predictions = cached(s3, BUCKET, prediction_profile_key(DIGEST, "bench", "1"),
                         lambda: ReferenceProfile.build(pd.DataFrame({"_prediction": predict(reference)})))
    return profile, predictions, champion_bins(champ, profile, predictions)


def write_window(s3: Any, bins: Any, endpoint: str, rows: int, files: int, numeric: int, categorical: int,
                 keep: bool = False) -> pd.DataFrame | None:
    """`rows` of current traffic as `files` capture summaries over the 23.5 hours before NOW: 23 whole
    hours and the current one, still open (a monitor can roll up the first, not the last)."""
    import pyarrow as pa

    from workloads import layout
    from workloads.capture.summary import Summary, summary_key
    from workloads.monitoring.summaries import bounded_map

    kept = []

    def one(i: int) -> None:
        rng = np.random.default_rng(1000 + i)
        n = rows // files + (1 if i < rows % files else 0)
        frame = make_table(n, numeric, categorical, True, rng)
        frame["_prediction"] = predict(frame)
        at = NOW - timedelta(hours=23.5) + timedelta(hours=23.5) * i / files
        table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
            "_ts", pa.array(np.full(n, int(at.timestamp() * 1e6)), type=pa.timestamp("us", tz="UTC")))
        body = Summary.of_table(table, bins, rng=rng).to_bytes()
        key = layout.capture_key(endpoint, at.replace(minute=0, second=0, microsecond=0), uuid.uuid4().hex)
        s3.put_object(Bucket=BUCKET, Key=summary_key(key), Body=body)
        # The capture file itself, as an empty stand-in: the monitor lists Parquet files and finds the
        # summary beside each (its rows are never read when the summary is usable).
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
        if keep:
            kept.append(frame)

    for _ in bounded_map(one, range(files), workers=4):
        pass
    return pd.concat(kept, ignore_index=True) if keep else None


# --- the monitor, in a fresh process ---------------------------------------------------------


def _status(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _cpu(pid: int) -> float:
    """A process's CPU seconds (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def monitor_child(url: str, endpoint: str, features: list[str], exact_rows: int, store: int) -> dict:
    from workloads.monitoring.drift import compare
    from workloads.monitoring.profile import cached, feature_profile_key, prediction_profile_key
    from workloads.monitoring.window import describe, read_window

    def missing() -> Any:
        raise AssertionError("the profiles are cached before the monitor runs")

    s3 = client(url)
    start = time.perf_counter()  # the monitor's own path: the cached profiles (and their bins) from the store
    profile = cached(s3, BUCKET, feature_profile_key(DIGEST, features), missing)
    predictions = cached(s3, BUCKET, prediction_profile_key(DIGEST, "bench", "1"), missing)
    loaded = time.perf_counter()
    cpu, store_cpu = time.process_time(), _cpu(store)  # on one machine the store's CPU competes with the monitor's
    before = _status("VmRSS")
    window = read_window(s3, BUCKET, endpoint, hours=24, now=NOW)
    current = window.current(champion(features), profile, predictions, exact_rows)
    report = compare(profile, current, prediction_profile=predictions)
    seconds = time.perf_counter() - loaded
    cpu, store_cpu = time.process_time() - cpu, _cpu(store) - store_cpu
    described = describe(window, hours=24, records=None, now=NOW)
    return {"rows": len(window), "files": described["files"], "rollups": described["rollups"], "seconds": seconds,
            "profile_seconds": loaded - start, "cpu_seconds": cpu, "store_cpu_seconds": store_cpu,
            "peak_rss_mb": _status("VmHWM"), "window_rss_mb": _status("VmHWM") - before, "exact": report.exact,
            "features": {f.name: f.model_dump() for f in [*report.features, report.prediction] if f}}


def _monitor(url: str, store: int, endpoint: str, features: list[str], exact_rows: int, repeat: int = 1) -> dict:
    """The fastest of `repeat` monitor processes, with the largest peak memory of them."""
    argv = [sys.executable, "-m", "benchmarks.drift_scale", "--child", url, endpoint, ",".join(features),
            str(exact_rows), str(store)]
    runs = []
    for _ in range(repeat):
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, env={
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise RuntimeError(f"monitor failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return best | {key: max(r[key] for r in runs) for key in ("peak_rss_mb", "window_rss_mb")} | {
        "all_seconds": [round(r["seconds"], 2) for r in runs]}


# --- checks and the table ----------------------------------------------------------------------


def check_against_full(full: pd.DataFrame, merged: dict, profile: Any, predictions: Any) -> dict:
    """PSI, chi-square and null rates identical; KS within each feature's stated bound."""
    from workloads.monitoring.drift import compare

    exact = compare(profile, full, prediction_profile=predictions)
    got = merged["features"]
    psi_same = all(got[f.name]["psi"] == f.psi for f in [*exact.features, exact.prediction] if f)
    chi_same = all((got[f.name]["statistic"], got[f.name]["p_value"]) == (f.statistic, f.p_value)
                   for f in exact.features if f.test == "chi2")
    nulls_same = all(got[f.name]["null_rate_current"] == f.null_rate_current for f in exact.features)
    ks = [(abs(got[f.name]["statistic"] - f.statistic), got[f.name]["ks_error"])
          for f in [*exact.features, exact.prediction] if f and f.test == "ks"]
    return {"psi_identical": psi_same, "chi2_identical": chi_same, "nulls_identical": nulls_same,
            "ks_max_diff": max(d for d, _ in ks), "ks_within": sum(d <= e for d, e in ks), "ks_columns": len(ks)}


def _row(label: str, r: dict) -> str:
    ks = [f for f in r["features"].values() if f["test"] == "ks"]
    n = min(f["sample_size"] or f["n_current"] for f in ks)
    eps = max(f["ks_error"] or 0.0 for f in ks)
    return (f"| {label} | {r['rows']:,} | {r['files']:,} ({r['rollups']}) | {r['seconds']:.2f} | "
            f"{r['cpu_seconds']:.2f} | {r['store_cpu_seconds']:.2f} | {r['profile_seconds']:.2f} | "
            f"{r['window_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {n:,} | {eps:.4f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window-rows", type=int, default=100_000_000)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--check-rows", type=int, default=1_000_000)
    parser.add_argument("--check-files", type=int, default=20)
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--categorical", type=int, default=5)
    parser.add_argument("--exact-rows", type=int, default=100_000, help="the check's window is above it")
    parser.add_argument("--repeat", type=int, default=3, help="monitor processes per window (best seconds)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, endpoint, features, exact_rows, store = args.child
        print(json.dumps(monitor_child(url, endpoint, features.split(","), int(exact_rows), int(store))))
        return 0
    print(describe(["numpy", "scipy", "pandas", "pyarrow", "boto3", "moto"]))
    proc, url = start_store()
    try:
        return _run(args, url, proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def _run(args: argparse.Namespace, url: str, store: int) -> int:
    s3 = client(url)
    reference = make_table(args.reference_rows, args.numeric, args.categorical, False, np.random.default_rng(0))
    profile, predictions, bins = cache_profiles(s3, reference)
    features = list(reference.columns)
    print(f"reference: {len(reference):,} rows x {args.numeric} numeric + {args.categorical} categorical "
          f"(+ prediction); store: moto_server on {url}")
    del reference
    started = time.perf_counter()
    full = write_window(s3, bins, "check", args.check_rows, args.check_files, args.numeric, args.categorical, keep=True)
    write_window(s3, bins, "scale", args.window_rows, args.files, args.numeric, args.categorical)
    print(f"generated and summarised {args.check_rows + args.window_rows:,} rows in "
          f"{time.perf_counter() - started:.0f} s (setup, not timed below)")
    check = _monitor(url, store, "check", features, args.exact_rows)
    assert full is not None
    verdict = check_against_full(full.assign(_prediction=predict(full)), check, profile, predictions)
    del full
    cold = _monitor(url, store, "scale", features, args.exact_rows)
    scale = _monitor(url, store, "scale", features, args.exact_rows, args.repeat)
    print("\n| window | rows | files (roll-ups) | seconds | monitor CPU s | store CPU s | profile load s "
          "| window peak MB | process peak MB | KS sample n | KS eps (95%) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(_row("check, 1 run (full data kept)", check))
    print(_row("first run (every summary read)", cold))
    print(_row("next runs (past hours rolled up)", scale))
    print(f"\nseconds of each monitor process: check {check['all_seconds']}, first {cold['all_seconds']}, "
          f"next {scale['all_seconds']}")
    print(f"\ncheck against drift.compare on the full {args.check_rows:,} rows: PSI identical "
          f"{verdict['psi_identical']}, chi-square identical {verdict['chi2_identical']}, null rates identical "
          f"{verdict['nulls_identical']}; KS within its DKW bound on {verdict['ks_within']}/{verdict['ks_columns']} "
          f"columns (max |KS summary - KS full| {verdict['ks_max_diff']:.4f})")
    for label, r in (("first run", cold), ("next runs", scale)):
        met = r["seconds"] < 10 and r["peak_rss_mb"] < 500
        print(f"target {'met    ' if met else 'NOT met'}  {label}: {r['rows']:,}-row window in {r['seconds']:.1f} s "
              f"(< 10) with peak RSS {r['peak_rss_mb']:.0f} MB (< 500)")
    ok = verdict["psi_identical"] and verdict["chi2_identical"] and verdict["nulls_identical"]
    return 0 if ok and verdict["ks_within"] >= verdict["ks_columns"] - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
