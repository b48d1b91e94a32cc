"""Model families a spec may name, estimators named by import path, and the preprocessing pipeline
every candidate is fitted in.

A spec's model is a built-in `family` or any scikit-learn-compatible estimator class named by
import path (`estimator: sklearn.ensemble.ExtraTreesClassifier`): a class deriving from
scikit-learn's BaseEstimator (what gives it `get_params` and estimator tags), constructible
without arguments, tagged classifier or regressor. Importing it runs its module's code: a spec
is trusted like the code it sits next to.
"""

from __future__ import annotations

import importlib
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
ESTIMATOR_TASKS: dict[str, Task] = {"classifier": "classification", "regressor": "regression"}


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


def import_estimator(path: str) -> tuple[type, Task]:
    """The estimator class at `module.Class` and the task it is for; ValueError saying what is wrong."""
    from sklearn.base import BaseEstimator
    from sklearn.utils import get_tags

    module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"{path!r} is not an import path (module.Class)")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ValueError(f"{path!r}: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ValueError(f"{path!r}: module {module_name!r} has no {class_name!r}") from None
    if not isinstance(cls, type) or not issubclass(cls, BaseEstimator):
        raise ValueError(f"{path!r} is not a scikit-learn estimator class (a subclass of BaseEstimator)")
    try:
        kind = get_tags(cls()).estimator_type
    except Exception as exc:  # needs constructor arguments, or broken tags
        raise ValueError(f"{path!r} cannot be constructed without arguments: {exc}") from None
    if kind not in ESTIMATOR_TASKS:
        raise ValueError(f"{path!r} is tagged {kind!r}, neither a classifier nor a regressor")
    return cls, ESTIMATOR_TASKS[kind]


def is_import_path(name: str) -> bool:
    """Families are plain words; anything with a dot is an estimator's import path."""
    return "." in name


def make_estimator(name: str, task: Task, seed: int) -> Any:
    """A fresh estimator for a family or an import path, seeded where it takes a random_state."""
    if is_import_path(name):
        try:
            cls, kind = import_estimator(name)
        except ValueError as exc:
            raise SpecError(f"models: estimator {exc}") from None
        if kind != task:
            raise SpecError(f"models: estimator {name!r} is for {kind}, but the task is {task}")
    else:
        found = _estimator_class(name, task)
        if found is None:
            raise SpecError(f"models: family {name!r} does not support task {task}; choose from {FAMILIES[task]}")
        cls = found
    kwargs: dict[str, Any] = {}
    params = cls().get_params()
    if "random_state" in params:
        kwargs["random_state"] = seed
    if "max_iter" in params and name == "logistic_regression":
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
                    # dense: histogram gradient boosting does not take sparse input; identifiers,
                    # which would make this matrix as wide as the data is long, never get here
                    # (features.py)
                    ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                ]),
                categorical,
            ),
        ]
    )
    return Pipeline([("prep", pre), ("model", estimator)])
