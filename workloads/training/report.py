"""What a training job reports: its result, a summary table, permutation importance and its plot,
and the progress line a person watches meanwhile."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from workloads.training.gate import GateReport
from workloads.training.metrics import Task
from workloads.training.parallel import parallelism
from workloads.training.search import Candidate


class TrainResult(BaseModel):
    model_name: str
    version: str
    decision: Literal["champion", "challenger"]
    reason: str
    metric: str
    metric_value: float
    holdout_metrics: dict[str, float]
    champion_version_before: str | None
    champion_metric_before: float | None  # on the rows the gate decided on (recent ones after drift)
    gate: GateReport | None = None  # both models' numbers on each dataset the gate used
    dropped_columns: dict[str, str] = {}  # identifier-like columns left out of the features, and why
    dataset_name: str
    dataset_digest: str
    dataset_uri: str
    dataset_uploaded: bool
    task: Task
    best_family: str
    best_params: dict[str, Any]
    n_candidates: int
    run_id: str
    experiment_id: str
    seconds: float


class ShardResult(BaseModel):
    model_name: str
    group: str
    shard: int
    shards: int
    n_candidates: int
    best: Candidate | None
    dataset_digest: str
    run_id: str
    seconds: float


def summary_table(result: TrainResult) -> Any:
    from rich.table import Table

    table = Table(title=f"{result.model_name} v{result.version}: {result.decision}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("decision", f"{result.decision} ({result.reason})"),
        ("best", f"{result.best_family} {result.best_params}"),
        ("candidates", str(result.n_candidates)),
        *((f"holdout {k}", f"{v:.4f}") for k, v in result.holdout_metrics.items()),
        ("champion before", "none" if result.champion_version_before is None else
         f"v{result.champion_version_before} ({result.champion_metric_before})"),
        *gate_rows(result.gate),
        *((f"dropped {column}", why) for column, why in result.dropped_columns.items()),
        ("dataset", f"{result.dataset_name} {result.dataset_digest} "
                    f"({'stored' if result.dataset_uploaded else 'already stored'})"),
        ("run", result.run_id),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def gate_rows(gate: GateReport | None) -> list[tuple[str, str]]:
    """The gate's numbers per dataset: `gate recent` and `gate holdout`, challenger vs champion."""
    if gate is None:
        return []
    rows = []
    for name, c in (("recent", gate.recent), ("holdout", gate.holdout)):
        if c is None:
            continue
        champion = "no champion" if c.champion is None else f"champion {c.champion:.4f}"
        recorded = "" if c.champion_recorded is None else f" (recorded {c.champion_recorded:.4f})"
        rows.append((f"gate {name}", f"{gate.metric} on {c.rows} rows: new {c.challenger:.4f}, {champion}{recorded}"))
    return rows


def shard_summary(result: ShardResult) -> str:
    best = "no candidates" if result.best is None else \
        f"best {result.best.family} {result.best.params} cv {result.best.cv_score:.4f}"
    return (f"shard {result.shard}/{result.shards} of group {result.group}: "
            f"{result.n_candidates} candidates, {best} (run {result.run_id})")


def permutation_importance(model: Any, X: pd.DataFrame, y: pd.Series, scoring: Any, seed: int) -> pd.DataFrame:
    from sklearn.inspection import permutation_importance as sklearn_importance

    repeats = 5
    with parallelism(len(X), repeats * X.shape[1]) as n_jobs:
        result = sklearn_importance(model, X, y, scoring=scoring, n_repeats=repeats, random_state=seed,
                                    n_jobs=n_jobs)
    table = pd.DataFrame({
        "feature": list(X.columns),
        "importance_mean": result.importances_mean,
        "importance_std": result.importances_std,
    })
    return table.sort_values("importance_mean", ascending=False, ignore_index=True)


def importance_figure(table: pd.DataFrame, metric: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display in jobs and tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1.2))
    shown = table.iloc[::-1]
    ax.barh(shown["feature"], shown["importance_mean"], xerr=shown["importance_std"], color="#4c72b0")
    ax.set_xlabel(f"drop in {metric} when the feature is shuffled (holdout)")
    ax.set_title("Permutation importance")
    fig.tight_layout()
    return fig


def log_importance(table: pd.DataFrame, metric: str) -> None:
    """The table and its plot as artifacts of the active run."""
    import mlflow

    mlflow.log_text(table.to_csv(index=False), "permutation_importance.csv")
    fig = importance_figure(table, metric)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    try:
        mlflow.log_figure(fig, "permutation_importance.png")
    finally:
        plt.close(fig)  # pyplot keeps every figure alive: a process that retrains would grow


class Bar:
    """One progress line for a job: a count of candidates and what the job is doing now."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), disable=not enabled, transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> Bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, description: str, total: int, completed: int = 0) -> None:
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self, n: int, description: str) -> None:
        self._progress.update(self._task, advance=n, description=description)

    def step(self, description: str) -> None:
        self._progress.update(self._task, description=description)

    def note(self, message: str) -> None:
        """A line above the bar (nothing with --json: the result carries it)."""
        if not self._progress.disable:
            self._progress.console.print(f"[yellow]note[/yellow]: {message}")
