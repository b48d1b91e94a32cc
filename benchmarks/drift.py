"""Benchmark: drift computation on reference and current tables (issue 7, benchmark 1).

    .venv/bin/python -m benchmarks.drift                      # 1,000,000 rows x 20 numeric + 5 categorical
    .venv/bin/python -m benchmarks.drift --rows 2000 --evidently-rows 0     # tiny (tests)

Methods, each in its own subprocess on the same Parquet files (seconds exclude loading and are
the best of `DRIFT_BENCH_REPEAT` runs, default 3; peak memory is tracemalloc's peak during the
first run, which numpy and pandas report to; evidently runs once):
- `ours`: `workloads.monitoring.drift.compare` against a `ReferenceProfile`; building the profile is
  timed separately (`ours: profile`), since a monitor builds it once per reference dataset;
- `scipy loop`: `scipy.stats.ks_2samp` per numeric column, `chi2_contingency` per categorical;
- `sort bound`: sorting every numeric column of both tables once (one thread): the cost any
  method that sorts both samples pays at least;
- `evidently`: its data-drift preset (KS for numeric, chi-square for categorical, so the
  statistics are the same ones) in a separate virtualenv (`.venv-bench`, evidently pins many
  packages), on a sample of `--evidently-rows` rows per table when that is below `--rows`.
The script checks our KS statistics equal scipy's to 1e-9 and chi-square to 1e-9 relative.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parent.parent
EVIDENTLY_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
CATEGORIES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]


def make_tables(rows: int, n_numeric: int, n_categorical: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current; the current is shifted on a quarter of the numeric and one categorical feature."""
    rng = np.random.default_rng(seed)
    return make_table(rows, n_numeric, n_categorical, False, rng), make_table(rows, n_numeric, n_categorical, True, rng)


def make_table(rows: int, n_numeric: int, n_categorical: int, shifted: bool, rng: np.random.Generator) -> pd.DataFrame:
    """One table of `make_tables`: the reference's distribution, or the current's (`shifted`)."""
    p = np.array([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
    cols: dict[str, object] = {}
    for i in range(n_numeric):
        shift = 0.1 * (i + 1) if shifted and i < max(1, n_numeric // 4) else 0.0
        values = rng.normal(shift, 1.0, rows) if i % 2 else rng.gamma(2.0 + shift, 1.0, rows)
        if i % 5 == 4:  # some integer-valued (tied) columns with missing values
            values = np.round(values * 3)
            values[rng.random(rows) < 0.02] = np.nan
        cols[f"num_{i:02d}"] = values
    for j in range(n_categorical):
        probs = p[::-1] if shifted and j == 0 else p
        cols[f"cat_{j}"] = pd.Series(rng.choice(CATEGORIES, rows, p=probs), dtype="str")
    return pd.DataFrame(cols)


# --- methods (each runs in a fresh subprocess) ----------------------------------------------


def run_ours(ref: pd.DataFrame, cur: pd.DataFrame, phase: str) -> dict:
    from workloads.monitoring.drift import compare
    from workloads.monitoring.profile import ReferenceProfile

    if phase == "profile":
        return _measure(lambda: ReferenceProfile.build(ref), lambda _: {})
    profile = ReferenceProfile.build(ref)
    return _measure(lambda: compare(profile, cur), lambda report: {
        "ks": {f.name: f.statistic for f in report.features if f.test == "ks"},
        "chi2": {f.name: f.statistic for f in report.features if f.test == "chi2"},
        "drifted": report.n_drifted,
    })


def run_scipy(ref: pd.DataFrame, cur: pd.DataFrame) -> dict:
    from scipy import stats

    def work() -> dict:
        ks, chi2 = {}, {}
        for name in ref.columns:
            if pd.api.types.is_numeric_dtype(ref[name]):
                a, b = ref[name].to_numpy(), cur[name].to_numpy()
                ks[name] = float(stats.ks_2samp(a[~np.isnan(a)], b[~np.isnan(b)]).statistic)
            else:
                table = pd.concat([ref[name].value_counts(), cur[name].value_counts()], axis=1).fillna(0)
                chi2[name] = float(stats.chi2_contingency(table.to_numpy().T).statistic)
        return {"ks": ks, "chi2": chi2}

    return _measure(work, lambda r: r)


def run_sort(ref: pd.DataFrame, cur: pd.DataFrame) -> dict:
    numeric = [c for c in ref.columns if pd.api.types.is_numeric_dtype(ref[c])]
    arrays = [t[c].to_numpy() for t in (ref, cur) for c in numeric]
    return _measure(lambda: [np.sort(a) for a in arrays], lambda _: {})


REPEAT = int(os.environ.get("DRIFT_BENCH_REPEAT", "3"))


def _measure(fn, summarise) -> dict:
    """Best of REPEAT runs (a shared machine is noisy); peak memory from the first run."""
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    times = [time.perf_counter() - start]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for _ in range(REPEAT - 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    return {"seconds": seconds, "peak_mb": peak / 2**20,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **summarise(out)}


EVIDENTLY_SCRIPT = r"""
import json, os, resource, sys, time, tracemalloc
os.environ["DO_NOT_TRACK"] = "true"; os.environ["EVIDENTLY_DISABLE_TELEMETRY"] = "1"
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
data, rows = sys.argv[1], int(sys.argv[2])
ref, cur = pd.read_parquet(f"{data}/ref.parquet"), pd.read_parquet(f"{data}/cur.parquet")
if rows < len(ref):
    ref, cur = ref.sample(rows, random_state=0), cur.sample(rows, random_state=0)
numeric = [c for c in ref.columns if c.startswith("num_")]
categorical = [c for c in ref.columns if c.startswith("cat_")]
definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
tracemalloc.start(); start = time.perf_counter()
report = Report([DataDriftPreset(num_method="ks", cat_method="chisquare")])
snapshot = report.run(Dataset.from_pandas(cur, data_definition=definition),
                      Dataset.from_pandas(ref, data_definition=definition))
snapshot.dict()
seconds = time.perf_counter() - start; peak = tracemalloc.get_traced_memory()[1]
import evidently
print(json.dumps({"seconds": seconds, "peak_mb": peak / 2**20, "rows": len(ref), "version": evidently.__version__,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(method: str, data: Path) -> dict:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.drift", "--child", method, "--data", str(data)],
                          cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _evidently(data: Path, rows: int, python: Path) -> dict | str:
    if not python.exists():
        return (f"not run: {python} missing (python3 -m venv .venv-bench && "
                ".venv-bench/bin/pip install evidently 'pandas<3' numpy scipy pyarrow)")
    env = {**os.environ, "DO_NOT_TRACK": "true"}
    proc = subprocess.run([str(python), "-c", EVIDENTLY_SCRIPT, str(data), str(rows)], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--categorical", type=int, default=5)
    parser.add_argument("--evidently-rows", type=int, default=100_000,
                        help="rows per table for evidently (a sample when below --rows); 0 skips it")
    parser.add_argument("--evidently-python", type=Path, default=EVIDENTLY_PYTHON)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one method, in this fresh process
        a, b = pd.read_parquet(args.data / "ref.parquet"), pd.read_parquet(args.data / "cur.parquet")
        runners = {"ours-profile": lambda: run_ours(a, b, "profile"), "ours": lambda: run_ours(a, b, "compare"),
                   "scipy": lambda: run_scipy(a, b), "sort": lambda: run_sort(a, b)}
        print(json.dumps(runners[args.child]()))
        return 0

    print(describe(["numpy", "scipy", "pandas", "pyarrow"]))
    print(f"tables: {args.rows:,} rows x {args.numeric} numeric + {args.categorical} categorical, "
          f"current shifted on {max(1, args.numeric // 4)} numeric and 1 categorical feature")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        ref, cur = make_tables(args.rows, args.numeric, args.categorical)
        ref.to_parquet(data / "ref.parquet"), cur.to_parquet(data / "cur.parquet")
        del ref, cur
        results = {name: _child(name, data) for name in ("sort", "scipy", "ours-profile", "ours")}
        evidently = _evidently(data, min(args.evidently_rows, args.rows), args.evidently_python) \
            if args.evidently_rows > 0 else "skipped (--evidently-rows 0)"

    ours, scipy_ = results["ours"], results["scipy"]
    ks_diff = max(abs(ours["ks"][k] - scipy_["ks"][k]) for k in scipy_["ks"])
    chi_diff = max((abs(ours["chi2"][k] - v) / max(abs(v), 1e-300) for k, v in scipy_["chi2"].items()), default=0.0)
    print(f"\nKS statistics: max |ours - scipy| = {ks_diff:.3g} over {len(scipy_['ks'])} columns "
          f"({'OK' if ks_diff <= 1e-9 else 'MISMATCH'}); chi-square max relative difference {chi_diff:.3g} "
          f"({'OK' if chi_diff <= 1e-9 else 'MISMATCH'}); features flagged drifted by ours: {ours['drifted']}")
    rows = [
        ("ours: compare (profile reused)", ours, f"{args.rows:,}"),
        ("ours: profile (once per reference)", results["ours-profile"], f"{args.rows:,}"),
        ("scipy loop (ks_2samp + chi2_contingency)", scipy_, f"{args.rows:,}"),
        ("sort bound (both tables, once)", results["sort"], f"{args.rows:,}"),
    ]
    if isinstance(evidently, dict):
        label = f"evidently {evidently['version']} DataDriftPreset (ks, chisquare)"
        rows.append((label, evidently, f"{evidently['rows']:,}" + (" (sample)" if evidently["rows"] < args.rows else "")))
    print("\n| method | rows per table | seconds | peak MB (tracemalloc) | max RSS MB | vs ours |")
    print("|---|---|---|---|---|---|")
    for name, r, n in rows:
        ratio = r["seconds"] / ours["seconds"] if ours["seconds"] else float("nan")
        print(f"| {name} | {n} | {r['seconds']:.3f} | {r['peak_mb']:.0f} | {r['maxrss_mb']:.0f} | {ratio:.1f}x |")
    if not isinstance(evidently, dict):
        print(f"| evidently | - | {evidently} | | | |")
    print(f"\nspeedup of ours over the scipy loop: {scipy_['seconds'] / ours['seconds']:.1f}x "
          f"(target >= 10x); over the sort bound: {results['sort']['seconds'] / ours['seconds']:.1f}x")
    return 0 if ks_diff <= 1e-9 and chi_diff <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
