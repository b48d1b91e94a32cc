"""The metrics a spec may name, and how a fitted model is scored with them.

Binary metrics that need a positive class (f1, average_precision; roc_auc's score column) take
it from the model: the spec's `positive_class` when given (kept on the fitted model as
`positive_class_`), else the second of the sorted classes (`classes_[1]`: 1 of 0/1, True of
booleans, "malignant" of "benign"/"malignant"). So string labels score like 0/1 labels, and
every scorer of a model (search, holdout, gate, monitoring) agrees on which class is positive.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
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
# Multiclass equivalents; None: the metric has none (refused for multiclass targets, prepare.py).
MULTICLASS_SCORERS = {"roc_auc": "roc_auc_ovr", "f1": "f1_macro", "average_precision": None}
POSITIVE_CLASS_METRICS = ("roc_auc", "f1", "average_precision")
DEFAULT_METRIC: dict[str, str] = {"classification": "roc_auc", "regression": "rmse"}


def _roc_auc_for(y_true: Any, y_score: Any, *, pos_label: Any) -> float:
    """roc_auc with an explicit positive class (sklearn's roc_auc_score takes none)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y_true) == pos_label, y_score))


def scorer_name(metric: Metric, n_classes: int) -> str | None:
    """scikit-learn's scorer name for this metric and number of classes (None: not defined)."""
    if metric.task == "classification" and n_classes > 2 and metric.name in MULTICLASS_SCORERS:
        return MULTICLASS_SCORERS[metric.name]
    return metric.scorer


def scorer(metric: Metric, n_classes: int, positive: Any = None) -> Any:
    """The scorer for `scoring=`: a name, or for binary positive-class metrics one bound to `positive`."""
    from sklearn.metrics import average_precision_score, f1_score, make_scorer

    name = scorer_name(metric, n_classes)
    if positive is None or n_classes != 2 or metric.name not in POSITIVE_CLASS_METRICS:
        return name
    if metric.name == "f1":
        return make_scorer(f1_score, pos_label=positive)
    probability = ("decision_function", "predict_proba")
    if metric.name == "average_precision":
        return make_scorer(average_precision_score, response_method=probability, pos_label=positive)
    return make_scorer(_roc_auc_for, response_method=probability, pos_label=positive)


def fitted(estimator: Any) -> Any:
    """The scikit-learn model inside what was logged (a probability-serving wrapper is unwrapped)."""
    return getattr(estimator, "scored_model", estimator)


def positive_class(estimator: Any) -> Any:
    """A fitted binary classifier's positive class: the spec's, else the second sorted class."""
    model = fitted(estimator)
    given = getattr(model, "positive_class_", None)
    classes = getattr(model, "classes_", None)
    if given is not None:
        return given
    return classes[1] if classes is not None and len(classes) == 2 else None


def score(estimator: Any, X: pd.DataFrame, y: pd.Series, metric: Metric, n_classes: int,
          positive: Any = None) -> float:
    """The metric in its natural sign (rmse positive, lower is better); `positive` overrides the
    model's positive class (the gate scores a champion with the challenger spec's)."""
    from sklearn.metrics import get_scorer

    model = fitted(estimator)
    if positive is None and metric.task == "classification":
        positive = positive_class(model)
    chosen = scorer(metric, n_classes, positive)
    value = float((get_scorer(chosen) if isinstance(chosen, str) else chosen)(model, X, y))
    return value if metric.greater_is_better else -value


def score_all(estimator: Any, X: pd.DataFrame, y: pd.Series, task: Task, n_classes: int) -> dict[str, float]:
    """Every metric of the task that applies to this number of classes, by name."""
    return {m.name: score(estimator, X, y, m, n_classes) for m in METRICS.values()
            if m.task == task and scorer_name(m, n_classes) is not None}
