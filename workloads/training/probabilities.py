"""Serving class probabilities (`predict: proba` in a spec).

The logged model is then a `ClassProbabilities` around the fitted pipeline, logged with
MLflow's sklearn flavor and `pyfunc_predict_fn="predict_proba"`: the pyfunc's predict (what
`mlops serve` and MLflow's scoring server call) returns a DataFrame with one column per class,
named by the class, so the scoring protocol answers
`{"predictions": [{"benign": 0.97, "malignant": 0.03}, ...]}`. For a binary target the
positive class is the last column (inference capture keeps the last column as `_prediction`).

Its `predict` still returns labels, and every scorer here scores `scored_model`, the pipeline
itself (metrics.fitted), so the gate and monitoring treat it like any other classifier.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin


class ClassProbabilities(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose `predict_proba` names its columns by class."""

    def __init__(self, scored_model: Any = None) -> None:
        self.scored_model = scored_model

    @property
    def classes_(self) -> Any:
        return self.scored_model.classes_

    def fit(self, X: pd.DataFrame, y: Any, **params: Any) -> ClassProbabilities:
        self.scored_model.fit(X, y, **params)
        return self

    def predict(self, X: pd.DataFrame) -> Any:
        return self.scored_model.predict(X)

    def predict_proba(self, X: pd.DataFrame) -> pd.DataFrame:
        columns = list(self.classes_)
        table = pd.DataFrame(self.scored_model.predict_proba(X), columns=[str(c) for c in columns])
        positive = getattr(self.scored_model, "positive_class_", None)
        if len(columns) == 2 and positive is not None and positive == columns[0]:
            table = table[[str(columns[1]), str(columns[0])]]  # the positive class last
        return table


def served(model: Any, predict: str) -> tuple[Any, str]:
    """What to log for `predict` (label or proba) and the pyfunc's predict function."""
    if predict == "proba":
        return ClassProbabilities(model), "predict_proba"
    return model, "predict"
