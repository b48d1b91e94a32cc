"""The search: every candidate of a spec, in a fixed order, cross-validated on the training split.

`plan_candidates` lists exactly what GridSearchCV / RandomizedSearchCV would try per family;
`shard_candidates` deals them out to search pods (no overlap, no gap); `evaluate`
cross-validates a list of them with scikit-learn, best first. Sharded and
unsharded searches score every candidate identically, so they pick the same best one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from workloads.training.errors import SpecError
from workloads.training.metrics import Metric, Task, scorer
from workloads.training.models import build_pipeline, make_estimator
from workloads.training.parallel import parallelism
from workloads.training.spec import ModelSpec, TrainingSpec


class Candidate(BaseModel):
    """One evaluated candidate."""

    index: int  # position in the spec's candidate list (see plan_candidates)
    family: str  # the built-in family or the estimator's import path
    params: dict[str, Any]
    cv_score: float
    cv_std: float
    fit_seconds: float


@dataclass(frozen=True)
class Planned:
    """One candidate of a spec's search, before it is evaluated."""

    index: int  # position in the spec's full candidate list: the identity shards and select agree on
    model_index: int
    family: str  # the built-in family or the estimator's import path
    params: dict[str, Any]  # estimator parameter -> value (without the pipeline prefix)


# --- the search space -----------------------------------------------------------------------


def _distribution(key: str, value: list[Any] | dict[str, list[float]]) -> Any:
    from scipy import stats

    if isinstance(value, list):
        if not value:
            raise SpecError(f"search_space.{key}: empty list of choices")
        return value
    if len(value) != 1:
        raise SpecError(f"search_space.{key}: give one of uniform, loguniform, randint: [low, high]")
    (kind, bounds), = value.items()
    if kind not in ("uniform", "loguniform", "randint") or len(bounds) != 2 or bounds[0] >= bounds[1]:
        raise SpecError(f"search_space.{key}: {kind}: {bounds} is not one of uniform|loguniform|randint: [low, high]")
    low, high = bounds
    if kind == "uniform":
        return stats.uniform(low, high - low)
    if kind == "loguniform":
        return stats.loguniform(low, high)
    return stats.randint(int(low), int(high) + 1)


def search_space(spec: ModelSpec, index: int, estimator: Any) -> dict[str, Any]:
    valid = estimator.get_params()
    space: dict[str, Any] = {}
    for key, value in spec.search_space.items():
        if key not in valid:
            raise SpecError(
                f"models[{index}].search_space.{key}: not a parameter of {type(estimator).__name__} "
                f"(valid: {', '.join(sorted(valid))})"
            )
        space[f"model__{key}"] = _distribution(f"{key}", value)
    return space


def check_spaces(spec: TrainingSpec, task: Task) -> None:
    """Every family supports the task and every search space is valid: spec errors before any work."""
    for index, model in enumerate(spec.models):
        search_space(model, index, make_estimator(model.name, task, spec.seed))


def _grid_size(space: dict[str, Any]) -> int | None:
    if not all(isinstance(v, list) for v in space.values()):
        return None
    return int(np.prod([len(v) for v in space.values()])) if space else 1


def _plain(value: Any) -> Any:
    """numpy scalars to Python, so params survive JSON and MLflow."""
    return value.item() if isinstance(value, np.generic) else value


def plan_candidates(spec: TrainingSpec, task: Task) -> list[Planned]:
    """Every candidate of the spec, in a fixed order: per family the whole grid when it has at most
    `n_iter` points, else `n_iter` draws of scikit-learn's ParameterSampler seeded with the spec's seed
    (exactly what GridSearchCV / RandomizedSearchCV would try)."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    planned: list[Planned] = []
    for model_index, model in enumerate(spec.models):
        space = search_space(model, model_index, make_estimator(model.name, task, spec.seed))
        size = _grid_size(space)
        points = (ParameterGrid(space) if size is not None and size <= spec.search.n_iter  # {} is one point
                  else ParameterSampler(space, n_iter=spec.search.n_iter, random_state=spec.seed))
        for params in points:
            planned.append(Planned(len(planned), model_index, model.name,
                                   {k.removeprefix("model__"): _plain(v) for k, v in params.items()}))
    return planned


def shard_candidates(planned: list[Planned], shard: int, shards: int) -> list[Planned]:
    """Shard `shard` of `shards` takes candidates shard, shard + shards, ...: no overlap, no gap."""
    if not 0 <= shard < shards:
        raise SpecError(f"--shard {shard}: must be in 0..{shards - 1} for --shards {shards}")
    return planned[shard::shards]


# --- evaluation -----------------------------------------------------------------------------


def best_first(candidates: list[Candidate], metric: Metric) -> list[Candidate]:
    """Best first; ties keep the spec's candidate order, so sharded and unsharded runs pick the same one."""
    return sorted(candidates, key=lambda c: (-c.cv_score if metric.greater_is_better else c.cv_score, c.index))


def evaluate(
    spec: TrainingSpec, task: Task, metric: Metric, n_classes: int, X: pd.DataFrame, y: pd.Series,
    planned: list[Planned], on_family: Callable[[str, int], None] | None = None, *,
    positive: Any = None, weights: np.ndarray | None = None,
) -> list[Candidate]:
    """Cross-validate the given candidates (training split only), best first; all cores unless the
    work is small (parallel.py).

    `positive`: the binary target's positive class (metrics.py); `weights`: per-row sample
    weights for fitting (recent rows after drift), the scores stay unweighted.
    """
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    folds = (StratifiedKFold if task == "classification" else KFold)(
        n_splits=spec.search.cv, shuffle=True, random_state=spec.seed
    )
    sign = 1.0 if metric.greater_is_better else -1.0
    fit_params = {} if weights is None else {"model__sample_weight": weights}
    candidates: list[Candidate] = []
    for model_index, model in enumerate(spec.models):
        mine = [p for p in planned if p.model_index == model_index]
        if not mine:
            continue
        pipeline = build_pipeline(X, make_estimator(model.name, task, spec.seed))
        # A grid of single points is exactly this list, evaluated in parallel over candidates x folds.
        grid = [{f"model__{k}": [v] for k, v in p.params.items()} for p in mine]
        with parallelism(len(X), len(mine) * spec.search.cv) as n_jobs:
            search = GridSearchCV(pipeline, grid, scoring=scorer(metric, n_classes, positive), cv=folds,
                                  n_jobs=n_jobs, refit=False, error_score="raise")
            search.fit(X, y, **fit_params)
        results = search.cv_results_
        for i, p in enumerate(mine):
            candidates.append(Candidate(
                index=p.index, family=p.family, params=p.params,
                cv_score=sign * float(results["mean_test_score"][i]),
                cv_std=float(results["std_test_score"][i]),
                fit_seconds=float(results["mean_fit_time"][i]),
            ))
        if on_family:
            on_family(model.name, len(mine))
    return best_first(candidates, metric)


def run_search(
    spec: TrainingSpec, task: Task, metric: Metric, n_classes: int, X: pd.DataFrame, y: pd.Series,
    on_family: Callable[[str, int], None] | None = None, *, positive: Any = None,
) -> list[Candidate]:
    """Search every family's space with cross-validation; every candidate, best first."""
    return evaluate(spec, task, metric, n_classes, X, y, plan_candidates(spec, task), on_family, positive=positive)
