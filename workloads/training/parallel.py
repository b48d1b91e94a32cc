"""How many processes a cross-validation or an importance computation gets.

joblib's worker processes cost seconds to start (each imports scikit-learn and pandas) and each
task ships the data to them: on small data that overhead is most of the time. The default churn
search (24 fits) on this 2-core machine, first search of a process (`benchmarks/training.py`):
quiet, 3.4 s here vs 3.9 s with `n_jobs=-1` at 2,000 rows and 5.9 vs 7.1 s at 20,000; busy (other
jobs on the cores), 1.7-2.1 vs 5.1-5.6 s at 2,000 rows and 8 vs 20 s at 20,000. A training pod's
peak memory halves (no worker processes: ~295 vs ~600 MiB in the contract harness). Up to
SEQUENTIAL_CELLS (rows x tasks) the work runs here with one BLAS/OpenMP thread
(HistGradientBoosting's OpenMP threads spin-wait when the cores are busy); above it, on all cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

SEQUENTIAL_CELLS = 1_000_000


@contextmanager
def parallelism(rows: int, tasks: int) -> Iterator[int]:
    """The `n_jobs` for `tasks` fits/scorings over `rows` rows, with thread limits for the block."""
    if rows * tasks > SEQUENTIAL_CELLS:
        yield -1
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield 1
