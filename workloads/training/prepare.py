"""Step 1 of every training job: read, validate and split the data, before anything is logged or stored.

Everything a spec can get wrong about its data is refused here with exit 2 (SpecError): a
metric the target cannot have (average_precision on more than two classes), a positive class
the target lacks, probabilities from a regressor or an estimator without predict_proba,
recent-row weights for an estimator that takes none, identifier columns (when refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workloads.data import dataset, partition
from workloads.data.schema import DatasetSchema, DataValidationError, Violation, check, kind_of
from workloads.environment import Environment
from workloads.training import features
from workloads.training.errors import SpecError
from workloads.training.metrics import DEFAULT_METRIC, METRICS, MULTICLASS_SCORERS, Metric, Task
from workloads.training.models import make_estimator
from workloads.training.search import check_spaces
from workloads.training.spec import TrainingSpec, format_uri


@dataclass(frozen=True)
class Target:
    """What the target is: the task, the metric, the classes and the positive one (binary)."""

    task: Task
    metric: Metric
    n_classes: int
    positive: Any  # the binary target's positive class (metrics.py); None otherwise


@dataclass(frozen=True)
class Prepared:
    """Validated data, split the way every step of a job (search shard, select, train) splits it."""

    df: pd.DataFrame  # as stored and digested, bookkeeping columns (partition.py) included
    schema: DatasetSchema
    schema_is_new: bool  # no stored and no explicit schema: the job stores this inferred one
    digest: str
    target: Target
    dropped: dict[str, str]  # identifier-like columns left out of the features, and why
    X_train: pd.DataFrame
    y_train: pd.Series
    w_train: np.ndarray | None  # sample weights (recent rows after drift), None: unweighted
    X_hold: pd.DataFrame  # every row not trained on: the model's recorded holdout metric
    y_hold: pd.Series
    recent: np.ndarray  # over the holdout rows: True for recent rows held back for the gate

    @property
    def task(self) -> Task:
        return self.target.task

    @property
    def metric(self) -> Metric:
        return self.target.metric

    @property
    def n_classes(self) -> int:
        return self.target.n_classes


def infer_task(y: pd.Series) -> Task:
    """Classification for booleans, strings and integers with few distinct values; else regression."""
    if kind_of(y) in ("boolean", "string"):
        return "classification"
    values = y.dropna()
    whole = kind_of(y) == "integer" or bool(np.all(np.mod(values, 1) == 0))
    return "classification" if whole and values.nunique() <= 20 else "regression"


def prepare(spec: TrainingSpec, env: Environment, data: pd.DataFrame | None = None) -> Prepared:
    """Read (unless `data` is given), validate and split; raises before anything is logged or stored."""
    if data is None:
        if not spec.dataset.source:
            raise SpecError("dataset.source: required unless data is passed in")
        data = dataset.load(format_uri(spec.dataset.source, env.outputs), env)
    df = data.reset_index(drop=True)
    plain = partition.payload(df)
    schema, schema_is_new = _validated(spec, plain, env)
    target = _target(spec, plain[spec.target])
    missing_excluded = [c for c in spec.exclude if c not in plain.columns]
    if missing_excluded:
        raise SpecError(f"exclude: column(s) {missing_excluded} not in the data")
    check_spaces(spec, target.task)
    _check_estimators(spec, target.task)
    chosen, dropped = features.select(plain, spec)
    if not chosen:
        raise SpecError(f"exclude/id_columns: no feature columns left (dropped as identifiers: {sorted(dropped)})")
    roles = partition.roles(df, spec.target, classification=target.task == "classification", seed=spec.seed,
                            holdout_fraction=spec.holdout_fraction)
    trained = roles.isin(partition.TRAINED).to_numpy()
    X = features.frame(plain, chosen)
    return Prepared(
        df=df, schema=schema, schema_is_new=schema_is_new, digest=dataset.digest(df), target=target,
        dropped=dropped, X_train=X.loc[trained], y_train=plain.loc[trained, spec.target],
        w_train=_weights(spec, roles[trained]),
        X_hold=X.loc[~trained], y_hold=plain.loc[~trained, spec.target],
        recent=(roles[~trained] == partition.RECENT_HOLDOUT).to_numpy(),
    )


def _target(spec: TrainingSpec, y: pd.Series) -> Target:
    """The task, metric, classes and positive class, each checked against the spec."""
    task: Task = spec.task or infer_task(y)
    metric = METRICS[spec.metric or DEFAULT_METRIC[task]]
    if metric.task != task:
        raise SpecError(f"metric: {metric.name} is a {metric.task} metric but the task is {task}")
    if task == "regression":
        if spec.predict == "proba" or spec.positive_class is not None:
            raise SpecError(f"predict/positive_class: for classification, but target {spec.target!r} is regression")
        return Target(task, metric, 0, None)
    classes = np.unique(y).tolist()  # sorted, as scikit-learn's classes_
    if len(classes) < 2:
        raise SpecError(f"target: {spec.target!r} has a single class; classification needs two or more")
    if len(classes) > 2 and MULTICLASS_SCORERS.get(metric.name, metric.scorer) is None:
        usable = [m.name for m in METRICS.values() if m.task == "classification"
                  and MULTICLASS_SCORERS.get(m.name, m.scorer) is not None]
        raise SpecError(f"metric: {metric.name} is defined for binary targets only, but {spec.target!r} has "
                        f"{len(classes)} classes {_shown(classes)}; choose from {usable}")
    if spec.positive_class is not None and spec.positive_class not in classes:
        raise SpecError(f"positive_class: {spec.positive_class!r} is not a class of {spec.target!r} "
                        f"{_shown(classes)}")
    if len(classes) > 2:
        return Target(task, metric, len(classes), None)
    positive = spec.positive_class if spec.positive_class is not None else classes[1]
    return Target(task, metric, 2, positive)


def _shown(classes: list[Any], limit: int = 10) -> str:
    return str(classes[:limit])[:-1] + (", ...]" if len(classes) > limit else "]")


def _check_estimators(spec: TrainingSpec, task: Task) -> None:
    """Every model can do what the spec asks of it: probabilities, sample weights."""
    from sklearn.utils.validation import has_fit_parameter

    for index, model in enumerate(spec.models):
        estimator = make_estimator(model.name, task, spec.seed)
        if spec.predict == "proba" and not hasattr(estimator, "predict_proba"):
            raise SpecError(f"predict: proba, but models[{index}] ({model.name}) has no predict_proba")
        if spec.retraining.recent_weight != 1.0 and not has_fit_parameter(estimator, "sample_weight"):
            raise SpecError(f"retraining.recent_weight: {spec.retraining.recent_weight}, but models[{index}] "
                            f"({model.name}) does not take sample_weight; use 1.0")


def _weights(spec: TrainingSpec, roles: pd.Series) -> np.ndarray | None:
    """Sample weights of the training rows: `retraining.recent_weight` for recent rows, 1 for the rest."""
    recent = (roles == partition.RECENT_TRAIN).to_numpy()
    if spec.retraining.recent_weight == 1.0 or not recent.any():
        return None
    return np.where(recent, spec.retraining.recent_weight, 1.0)


def _validated(spec: TrainingSpec, df: pd.DataFrame, env: Environment) -> tuple[DatasetSchema, bool]:
    """The schema `df` passed (explicit, else stored, else inferred) and whether it is a new one."""
    name = spec.dataset.name
    if spec.target not in df.columns:
        raise DataValidationError(name, [Violation(
            column=spec.target, check="missing_column", message="the target column is missing")])
    stored = dataset.load_schema(name, env)
    schema = spec.dataset.data_schema or stored or DatasetSchema.infer(df)
    check(df, schema, name)
    if df[spec.target].isna().any():
        raise DataValidationError(name, [Violation(
            column=spec.target, check="null_rate", message="the target has missing values")])
    return schema, stored is None and spec.dataset.data_schema is None
