"""The metrics a spec may name, and how a fitted model is scored with them."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

Task = Literal["classification", "regression"]


class Metric(BaseModel):
    name: str
    scorer: str  # scikit-learn scorer name (always "greater is better")
    greater_is_better: bool
    task: Task


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(name="roc_auc", scorer="roc_auc", greater_is_better=True, task="classification"),
        Metric(name="accuracy", scorer="accuracy", greater_is_better=True, task="classification"),
        Metric(name="f1", scorer="f1", greater_is_better=True, task="classification"),
        Metric(name="average_precision", scorer="average_precision", greater_is_better=True, task="classification"),
        Metric(name="log_loss", scorer="neg_log_loss", greater_is_better=False, task="classification"),
        Metric(name="rmse", scorer="neg_root_mean_squared_error", greater_is_better=False, task="regression"),
        Metric(name="mae", scorer="neg_mean_absolute_error", greater_is_better=False, task="regression"),
        Metric(name="r2", scorer="r2", greater_is_better=True, task="regression"),
    ]
}
MULTICLASS_SCORERS = {"roc_auc": "roc_auc_ovr", "f1": "f1_macro", "average_precision": None}
DEFAULT_METRIC: dict[str, str] = {"classification": "roc_auc", "regression": "rmse"}


def scorer_name(metric: Metric, n_classes: int) -> str | None:
    if metric.task == "classification" and n_classes > 2 and metric.name in MULTICLASS_SCORERS:
        return MULTICLASS_SCORERS[metric.name]
    return metric.scorer


def score(estimator: Any, X: pd.DataFrame, y: pd.Series, metric: Metric, n_classes: int) -> float:
    """The metric in its natural sign (rmse positive, lower is better)."""
    from sklearn.metrics import get_scorer

    value = float(get_scorer(scorer_name(metric, n_classes))(estimator, X, y))
    return value if metric.greater_is_better else -value


def score_all(estimator: Any, X: pd.DataFrame, y: pd.Series, task: Task, n_classes: int) -> dict[str, float]:
    """Every metric of the task that applies to this number of classes, by name."""
    return {m.name: score(estimator, X, y, m, n_classes) for m in METRICS.values()
            if m.task == task and scorer_name(m, n_classes) is not None}
