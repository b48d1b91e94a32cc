"""Benchmark: how long `mlops plan` takes per stack, and how rendering grows with endpoints.

    .venv/bin/python -m benchmarks.plan                    # all five stacks + 10/50/100 endpoints
    .venv/bin/python -m benchmarks.plan --endpoints 1 2 --repeat 1 --no-cli   # tiny (tests)

Two numbers per stack: the in-process render (the program under Pulumi mocks, imports
already paid) and the wall time of the `mlops plan STACK` command a user types (a fresh
interpreter: imports included). Generated configs copy the dev stack and declare N
serving endpoints; the slope (ms per endpoint) and the fit's R² show whether it is linear.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import describe
from components.render import load_stack_config, render_stack, stack_file

STACKS = ["dev", "staging", "prod", "ci", "local"]
SECRETS = {"trackingAdminPassword": "benchmark-admin-password"}
ROOT = Path(__file__).resolve().parent.parent


def time_render(repeat: int, **kwargs) -> tuple[float, int]:
    """Median seconds of `repeat` renders, and the number of resources registered."""
    times, count = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = render_stack(secrets=SECRETS, **kwargs)
        times.append(time.perf_counter() - start)
        count = len(result.resources)
    return statistics.median(times), count


def time_cli(stack: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workloads.cli", "plan", stack], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def config_with_endpoints(n: int) -> dict:
    config = copy.deepcopy(load_stack_config(stack_file("dev")))
    config["mlops-platform:serving"] = {"endpoints": [
        {"name": f"model-{i}", "model": f"model-{i}", "alias": "champion", "replicas": {"min": 1, "max": 2}}
        for i in range(n)
    ]}
    return config


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² (no numpy needed for a handful of points)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-12
    return slope, intercept, 1 - ss_res / ss_tot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", nargs="*", default=STACKS)
    parser.add_argument("--endpoints", nargs="*", type=int, default=[10, 50, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="skip the `mlops plan` wall-time column")
    args = parser.parse_args(argv)

    print(describe(["pulumi", "pulumi-aws", "pulumi-kubernetes", "pydantic"]))
    print()
    render_stack("dev", secrets=SECRETS)  # warm-up: imports and first-render caches

    print(f"{'stack':<10} {'resources':>9} {'render s':>9} {'mlops plan s':>13}")
    for stack in args.stacks:
        seconds, count = time_render(args.repeat, stack=stack)
        cli = "-" if args.no_cli else f"{time_cli(stack):.2f}"
        print(f"{stack:<10} {count:>9} {seconds:>9.3f} {cli:>13}")

    if len(args.endpoints) >= 2:
        print()
        print(f"{'endpoints':>9} {'resources':>9} {'render s':>9}")
        xs, ys = [], []
        for n in args.endpoints:
            seconds, count = time_render(args.repeat, stack=f"gen-{n}", config=config_with_endpoints(n),
                                         stack_name="dev")
            xs.append(n)
            ys.append(seconds)
            print(f"{n:>9} {count:>9} {seconds:>9.3f}")
        slope, intercept, r2 = linear_fit(xs, ys)
        print(f"\nfit: {intercept:.3f} s + {slope * 1000:.1f} ms per endpoint (R² {r2:.4f})")


if __name__ == "__main__":
    main()
