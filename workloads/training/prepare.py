"""Step 1 of every training job: read, validate and split the data, before anything is logged or stored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from workloads.data import dataset
from workloads.data.schema import DatasetSchema, DataValidationError, Violation, check, kind_of
from workloads.environment import Environment
from workloads.training.errors import SpecError
from workloads.training.metrics import DEFAULT_METRIC, METRICS, Metric, Task
from workloads.training.search import check_spaces
from workloads.training.spec import TrainingSpec, format_uri


@dataclass(frozen=True)
class Prepared:
    """Validated data, split the way every step of a job (search shard, select, train) splits it."""

    df: pd.DataFrame
    schema: DatasetSchema
    schema_is_new: bool  # no stored and no explicit schema: the job stores this inferred one
    digest: str
    task: Task
    metric: Metric
    n_classes: int
    X_train: pd.DataFrame
    y_train: pd.Series
    X_hold: pd.DataFrame
    y_hold: pd.Series


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
    schema, schema_is_new = _validated(spec, df, env)
    task: Task = spec.task or infer_task(df[spec.target])
    metric = METRICS[spec.metric or DEFAULT_METRIC[task]]
    if metric.task != task:
        raise SpecError(f"metric: {metric.name} is a {metric.task} metric but the task is {task}")
    n_classes = int(df[spec.target].nunique()) if task == "classification" else 0
    if task == "classification" and n_classes < 2:
        raise SpecError(f"target: {spec.target!r} has a single class; classification needs two or more")
    missing_excluded = [c for c in spec.exclude if c not in df.columns]
    if missing_excluded:
        raise SpecError(f"exclude: column(s) {missing_excluded} not in the data")
    check_spaces(spec, task)
    train_df, holdout_df = dataset.split(
        df, spec.target, classification=task == "classification", seed=spec.seed,
        holdout_fraction=spec.holdout_fraction,
    )
    features = [c for c in df.columns if c != spec.target and c not in spec.exclude]
    return Prepared(
        df=df, schema=schema, schema_is_new=schema_is_new, digest=dataset.digest(df), task=task, metric=metric,
        n_classes=n_classes, X_train=train_df[features], y_train=train_df[spec.target],
        X_hold=holdout_df[features], y_hold=holdout_df[spec.target],
    )


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
