"""Decay: the champion's metric on the labelled window rows against its holdout value."""

from __future__ import annotations

import pandas as pd

from workloads.monitoring.reference import Champion
from workloads.monitoring.result import Performance
from workloads.settings import MonitorSettings

# Metrics whose scale is unbounded: their drop is measured relative to the holdout value.
RELATIVE_DROP_METRICS = {"rmse", "mae", "log_loss"}


def performance(
    champ: Champion, labelled: pd.DataFrame, settings: MonitorSettings,
) -> tuple[Performance | None, list[str]]:
    """The champion's metric on `labelled` (window rows with a `label`), or why there is none."""
    import mlflow

    from workloads.training.metrics import METRICS, score

    metric_name, holdout = champ.tags.get("mlops.metric"), champ.tags.get("mlops.metric.value")
    if len(labelled) < settings.min_labelled_rows:
        return None, [f"{len(labelled)} labelled rows in the window, below {settings.min_labelled_rows}: no metric"]
    if metric_name not in METRICS or holdout is None:
        return None, [f"the champion has no usable mlops.metric/mlops.metric.value tags ({metric_name!r})"]
    metric = METRICS[metric_name]
    model = mlflow.sklearn.load_model(champ.uri)
    y = labelled["label"]
    n_classes = int(y.nunique()) if metric.task == "classification" else 0
    try:
        current = score(model, labelled[champ.features], y, metric, max(n_classes, 2))
    except ValueError as exc:  # e.g. one class only in the labelled rows: roc_auc is undefined
        return None, [f"{metric_name} undefined on the labelled rows: {exc}"]
    reference = float(holdout)
    worse = reference - current if metric.greater_is_better else current - reference
    drop = worse / abs(reference) if metric_name in RELATIVE_DROP_METRICS and reference else worse
    return Performance(metric=metric_name, holdout=reference, current=current, drop=drop,
                       labelled_rows=len(labelled), decayed=drop > settings.metric_drop), []
