"""Model families a spec may name, and the preprocessing pipeline every candidate is fitted in."""

from __future__ import annotations

from typing import Any

import pandas as pd

from workloads.data.schema import kind_of
from workloads.training.errors import SpecError
from workloads.training.metrics import Task

FAMILIES = {
    "classification": ["logistic_regression", "random_forest", "hist_gradient_boosting"],
    "regression": ["ridge", "lasso", "linear_regression", "random_forest", "hist_gradient_boosting"],
}
KNOWN_FAMILIES = sorted({family for families in FAMILIES.values() for family in families})


def _estimator_class(family: str, task: Task) -> type | None:
    from sklearn import ensemble, linear_model

    table: dict[tuple[str, str], type] = {
        ("logistic_regression", "classification"): linear_model.LogisticRegression,
        ("random_forest", "classification"): ensemble.RandomForestClassifier,
        ("hist_gradient_boosting", "classification"): ensemble.HistGradientBoostingClassifier,
        ("random_forest", "regression"): ensemble.RandomForestRegressor,
        ("hist_gradient_boosting", "regression"): ensemble.HistGradientBoostingRegressor,
        ("ridge", "regression"): linear_model.Ridge,
        ("lasso", "regression"): linear_model.Lasso,
        ("linear_regression", "regression"): linear_model.LinearRegression,
    }
    return table.get((family, task))


def make_estimator(family: str, task: Task, seed: int) -> Any:
    cls = _estimator_class(family, task)
    if cls is None:
        raise SpecError(f"models: family {family!r} does not support task {task}; choose from {FAMILIES[task]}")
    kwargs: dict[str, Any] = {}
    params = cls().get_params()
    if "random_state" in params:
        kwargs["random_state"] = seed
    if "max_iter" in params and family == "logistic_regression":
        kwargs["max_iter"] = 2000
    return cls(**kwargs)


def build_pipeline(X: pd.DataFrame, estimator: Any) -> Any:
    """Impute and scale numeric columns, impute and one-hot encode the others, then the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in X.columns if kind_of(X[c]) in ("integer", "float", "boolean")]
    categorical = [c for c in X.columns if c not in numeric]
    pre = ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
            (
                "categorical",
                Pipeline([
                    ("impute", SimpleImputer(strategy="most_frequent")),
                    # dense: histogram gradient boosting does not take sparse input
                    ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                ]),
                categorical,
            ),
        ]
    )
    return Pipeline([("prep", pre), ("model", estimator)])
