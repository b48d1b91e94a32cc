"""Benchmark: the training search as `train()` runs it, forced onto all cores, and on one core; the
quickstart's wall time (issue 7, #4).

    .venv/bin/python -m benchmarks.training                   # 20,000 rows, workloads/specs/churn.yaml, quickstart
    .venv/bin/python -m benchmarks.training --quick           # 4,000 rows, a smaller quickstart
    .venv/bin/python -m benchmarks.training --rows 400 --no-quickstart      # tiny (tests)

Search: `workloads.training.search.run_search` (what `train()` runs: every family of the spec, scikit-learn
cross-validation; in-process with one thread when the work is small, else `n_jobs=-1`: see
workloads/training/parallel.py) on the sample churn data, each measurement in its own
subprocess. "as train() runs it" applies that rule; "all cores" forces `n_jobs=-1` whatever the
size (what the rule avoids on small data); the "1 core" process is pinned to one CPU
with `sched_setaffinity` before Python starts, so joblib (loky's `cpu_count` honours the
affinity mask), OpenMP (histogram gradient boosting) and BLAS all see one core. That is also
what a training Job gets with a CPU limit of 1. Seconds are the best of `--repeat` runs and
exclude imports and data generation. "seconds" is the first search in a fresh process (what a
training Job pays, joblib's worker start-up included), "warm" a second search in the same
process. Both settings must produce the same candidates and scores.

Quickstart: `workloads.devstack.quickstart.run` in a fresh temporary workdir (stack up, train, serve,
traffic, two monitoring windows, retraining, reload), total and per step, plus stopping the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "workloads" / "specs" / "churn.yaml"
QUICKSTART_TARGET_SECONDS = 180.0
PACKAGES = ["scikit-learn", "numpy", "scipy", "pandas", "joblib", "mlflow"]


# --- the search, in a child process ---------------------------------------------------------


def search_child(rows: int, spec_path: Path, seed: int, force_parallel: bool) -> dict:
    """Time one `run_search` on the sample data (runs inside the pinned child)."""
    import workloads  # noqa: F401 - telemetry off before mlflow can be imported
    from workloads.data.sample import generate
    from workloads.training import parallel
    from workloads.training.metrics import DEFAULT_METRIC, METRICS
    from workloads.training.prepare import infer_task
    from workloads.training.search import run_search
    from workloads.training.spec import TrainingSpec

    if force_parallel:
        parallel.SEQUENTIAL_CELLS = -1  # every search on all cores
    spec = TrainingSpec.from_yaml(spec_path)
    df = generate(rows, seed=seed)
    y = df[spec.target]
    X = df[[c for c in df.columns if c != spec.target and c not in spec.exclude]]
    task = spec.task or infer_task(y)
    metric = METRICS[spec.metric or DEFAULT_METRIC[task]]
    n_classes = int(y.nunique()) if task == "classification" else 0
    started = time.perf_counter()
    candidates = run_search(spec, task, metric, n_classes, X, y)
    seconds = time.perf_counter() - started
    # Again in the same process: joblib's worker processes are already up (what a long-lived
    # process would see; a training Job runs one search and pays the start-up above).
    started = time.perf_counter()
    run_search(spec, task, metric, n_classes, X, y)
    warm = time.perf_counter() - started
    return {
        "seconds": seconds,
        "warm_seconds": warm,
        "cpus": len(os.sched_getaffinity(0)),
        "fits": len(candidates) * spec.search.cv,
        "scores": [[c.family, json.dumps(c.params, sort_keys=True), c.cv_score] for c in candidates],
        "best": f"{candidates[0].family} {candidates[0].params} ({metric.name} {candidates[0].cv_score:.4f})",
    }


def run_search_in_child(rows: int, spec_path: Path, seed: int, cpus: set[int] | None,
                        force_parallel: bool = False) -> dict:
    """One measurement in a fresh interpreter, optionally pinned to `cpus`."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.training", "--child", "--rows", str(rows), "--spec", str(spec_path),
         "--seed", str(seed), *(["--force-parallel"] if force_parallel else [])],
        capture_output=True, text=True, cwd=ROOT, env=env, preexec_fn=pin, check=False,  # noqa: PLW1509
    )
    if proc.returncode != 0:
        raise RuntimeError(f"search child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_search(rows: int, spec_path: Path, seed: int, repeat: int) -> dict[str, dict]:
    all_cpus = os.sched_getaffinity(0)
    settings = {"as train()": (None, False), "all cores": (None, True), "1 core": ({min(all_cpus)}, False)}
    results: dict[str, dict] = {}
    for label, (cpus, force) in settings.items():
        runs = [run_search_in_child(rows, spec_path, seed, cpus, force) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        results[label] = {**best, "warm_seconds": min(r["warm_seconds"] for r in runs),
                          "runs": [round(r["seconds"], 2) for r in runs]}
    return results


# --- the quickstart -------------------------------------------------------------------------


def measure_quickstart(quick: bool) -> dict:
    from rich.console import Console

    import workloads  # noqa: F401
    from workloads.devstack.quickstart import Sizes, run
    from workloads.devstack.stack import LocalStack

    sizes = Sizes(train_rows=1500, window_rows=300, rows_per_request=15) if quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as tmp, open(os.devnull, "w") as quiet:
        workdir = Path(tmp) / "quickstart"
        started = time.perf_counter()
        try:
            # Our own down, timed as its own step (the demo's steps exclude it).
            summary = run(workdir, sizes, down=False, console=Console(file=quiet))
            total = time.perf_counter() - started
        finally:
            stopped = time.perf_counter()
            LocalStack(workdir).down(snapshot=False)
            down_seconds = time.perf_counter() - stopped
    steps = [(s.step, s.seconds, s.outcome) for s in summary.steps] + [("local stack down", down_seconds, "")]
    return {"sizes": sizes.model_dump(), "seconds": total + down_seconds, "steps": steps}


# --- report ---------------------------------------------------------------------------------


def print_report(rows: int, spec_path: Path, search: dict[str, dict], quickstart: dict | None) -> None:
    print(describe(PACKAGES))
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print()
    print(f"training search: {rows:,} rows, spec {spec_path.relative_to(ROOT) if spec_path.is_relative_to(ROOT) else spec_path}, "
          f"{search['all cores']['fits']} cross-validation fits")
    print(f"{'setting':<11} {'cpus':>4} {'seconds':>9} {'warm':>7}  runs (first search of each process)")
    for label, r in search.items():
        print(f"{label:<11} {r['cpus']:>4} {r['seconds']:>9.2f} {r['warm_seconds']:>7.2f}  {r['runs']}")
    one, many, rule = search["1 core"], search["all cores"], search["as train()"]
    print(f"speedup all cores vs 1 core: {one['seconds'] / many['seconds']:.2f}x "
          f"(warm, joblib workers already started: {one['warm_seconds'] / many['warm_seconds']:.2f}x); "
          f"as train() vs all cores: {many['seconds'] / rule['seconds']:.2f}x")
    same = one["scores"] == many["scores"] == rule["scores"]
    print(f"same candidates and cv scores in every run: {'yes' if same else 'NO'}")
    print(f"best: {many['best']}")
    if quickstart is None:
        return
    print()
    sizes = quickstart["sizes"]
    print(f"quickstart: train_rows {sizes['train_rows']:,}, window_rows {sizes['window_rows']:,}, "
          f"rows_per_request {sizes['rows_per_request']}")
    print(f"{'step':<20} {'seconds':>8}  outcome")
    for step, seconds, outcome in quickstart["steps"]:
        print(f"{step:<20} {seconds:>8.1f}  {outcome[:70]}")
    total = quickstart["seconds"]
    verdict = "met" if total < QUICKSTART_TARGET_SECONDS else "NOT met"
    print(f"{'total':<20} {total:>8.1f}  (target under {QUICKSTART_TARGET_SECONDS:.0f} s: {verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of training data [20000; 4000 with --quick]")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="training spec [workloads/specs/churn.yaml]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="search runs per setting; the best counts [2]")
    parser.add_argument("--quick", action="store_true", help="4,000 rows and the quickstart at test sizes")
    parser.add_argument("--no-quickstart", action="store_true", help="skip the quickstart measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--force-parallel", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = args.rows or (4000 if args.quick else 20_000)
    spec_path = args.spec.resolve()
    if args.child:
        print(json.dumps(search_child(rows, spec_path, args.seed, args.force_parallel)))
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    search = measure_search(rows, spec_path, args.seed, args.repeat)
    quickstart = None if args.no_quickstart else measure_quickstart(args.quick)
    print_report(rows, spec_path, search, quickstart)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "search": search, "quickstart": quickstart}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
