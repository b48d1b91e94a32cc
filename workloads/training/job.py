"""Training: a YAML spec in, a tracked, registered model version out, promoted only when it wins.

Steps, in order (see `train`):
1. read and validate the data against its schema (nothing is logged when it fails);
2. store it once by content digest and split it (seeded; stratified for classification);
3. in one MLflow run: search every model family's space with scikit-learn (all cores), log
   each candidate as a nested run, refit the best on the training split, log holdout
   metrics, the model (signature, input example), permutation importance (plot and table).
   On a cluster the search can instead run in N pods (`search_shard`: candidate i goes to
   shard i mod N) and `select` hands the union of their candidates to this same step;
4. score the current `champion` on the same holdout;
5. only then register the version with its lineage tags and set alias `champion` (wins by
   the margin, or no champion yet, and passes the floor) or `challenger`. A failure while
   registering deletes the version again: a failed job leaves no version behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workloads.data import dataset as datasets
from workloads.environment import StackOutputs
from workloads.errors import MlopsError, UsageError

Task = Literal["classification", "regression"]
MODEL_ARTIFACT = "model"
CHAMPION, CHALLENGER = "champion", "challenger"


class SpecError(UsageError, ValueError):
    kind = "SpecError"

    """The training spec is invalid; the message names the key."""


class TrainingError(MlopsError, RuntimeError):
    kind = "training failed"

    """Training could not complete; no model version was left registered."""


# --- metrics --------------------------------------------------------------------------------


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


# --- model families -------------------------------------------------------------------------


def _estimator_classes(family: str, task: Task) -> type | None:
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


FAMILIES = {
    "classification": ["logistic_regression", "random_forest", "hist_gradient_boosting"],
    "regression": ["ridge", "lasso", "linear_regression", "random_forest", "hist_gradient_boosting"],
}


def make_estimator(family: str, task: Task, seed: int) -> Any:
    cls = _estimator_classes(family, task)
    if cls is None:
        raise SpecError(f"models: family {family!r} does not support task {task}; choose from {FAMILIES[task]}")
    kwargs: dict[str, Any] = {}
    params = cls().get_params()
    if "random_state" in params:
        kwargs["random_state"] = seed
    if "max_iter" in params and family == "logistic_regression":
        kwargs["max_iter"] = 2000
    return cls(**kwargs)


# --- stack placeholders in URIs ------------------------------------------------------------

# `{data_bucket}` etc.: the string fields of the outputs contract, so one spec works in every environment.
PLACEHOLDERS = sorted(
    name for name, field in StackOutputs.model_fields.items() if name != "serving_endpoints"
)


def placeholders(template: str, key: str = "dataset.source") -> list[str]:
    """The `{name}` placeholders in `template`; SpecError for unknown names or malformed braces."""
    try:
        fields = [(name, conv, fmt) for _, name, fmt, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise SpecError(f"{key}: {template!r}: {exc} (write literal braces as {{{{ and }}}})") from None
    for name, conv, fmt in fields:
        if name not in PLACEHOLDERS or conv or fmt:
            raise SpecError(f"{key}: unknown placeholder {{{name}{'!' + conv if conv else ''}"
                            f"{':' + fmt if fmt else ''}}} in {template!r}; "
                            f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return [name for name, _, _ in fields]


def format_uri(template: str, outputs: StackOutputs, key: str = "dataset.source") -> str:
    """`template` with its placeholders filled from the stack outputs (e.g. `s3://{data_bucket}/x.csv`)."""
    values = outputs.model_dump()
    names = placeholders(template, key)
    unset = sorted({n for n in names if values[n] is None})
    if unset:
        raise SpecError(f"{key}: {template!r} uses {unset}, not set in environment {outputs.environment!r}")
    return template.format(**{n: values[n] for n in names})


# --- the spec -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    source: str | None = Field(
        None, description="path or s3:// URI of a CSV or Parquet file; may use stack outputs: s3://{data_bucket}/..."
    )
    data_schema: datasets.DatasetSchema | None = Field(
        None, alias="schema", description="explicit schema; else the one stored with the first version"
    )


    @field_validator("source")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                placeholders(value)
            except SpecError as exc:
                raise ValueError(str(exc).removeprefix("dataset.source: ")) from None
        return value


class ModelSpec(_Strict):
    family: str
    # estimator parameter -> a list of choices, or {uniform|loguniform|randint: [low, high]}
    search_space: dict[str, list[Any] | dict[str, list[float]]] = {}

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        known = sorted({f for fams in FAMILIES.values() for f in fams})
        if value not in known:
            raise ValueError(f"unknown family {value!r}; choose from {known}")
        return value


class PromotionSpec(_Strict):
    margin: float = Field(0.0, ge=0.0, description="must beat the champion's holdout metric by this much")
    floor: float | None = Field(None, description="the metric must reach this (or stay under, if lower is better)")


class SearchSpec(_Strict):
    n_iter: int = Field(8, ge=1, description="candidates per family (the whole grid if smaller)")
    cv: int = Field(3, ge=2)


class TrainingSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="registered model name")
    dataset: DatasetSpec
    target: str
    task: Task | None = None
    exclude: list[str] = Field([], description="columns that are not features (ids, timestamps)")
    models: list[ModelSpec] = Field(min_length=1)
    metric: str | None = None
    promotion: PromotionSpec = PromotionSpec()
    seed: int = 0
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    search: SearchSpec = SearchSpec()
    experiment: str | None = Field(None, description="MLflow experiment (default: the model name)")

    @model_validator(mode="after")
    def _metric_known(self) -> TrainingSpec:
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"metric: unknown {self.metric!r}; choose from {sorted(METRICS)}")
        if self.target in self.exclude:
            raise ValueError(f"exclude: contains the target {self.target!r}")
        return self

    @classmethod
    def from_yaml(cls, path: Path | str) -> TrainingSpec:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: {exc}") from None
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: Any, source: str = "spec") -> TrainingSpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
            )
            raise SpecError(f"{source}: {problems}") from None

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- result ---------------------------------------------------------------------------------


class Candidate(BaseModel):
    index: int  # position in the spec's candidate list (see plan_candidates)
    family: str
    params: dict[str, Any]
    cv_score: float
    cv_std: float
    fit_seconds: float


class TrainResult(BaseModel):
    model_name: str
    version: str
    decision: Literal["champion", "challenger"]
    reason: str
    metric: str
    metric_value: float
    holdout_metrics: dict[str, float]
    champion_version_before: str | None
    champion_metric_before: float | None
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


# --- pipeline and search --------------------------------------------------------------------


def infer_task(y: pd.Series) -> Task:
    """Classification for booleans, strings and integers with few distinct values; else regression."""
    if datasets.kind_of(y) in ("boolean", "string"):
        return "classification"
    values = y.dropna()
    whole = datasets.kind_of(y) == "integer" or bool(np.all(np.mod(values, 1) == 0))
    return "classification" if whole and values.nunique() <= 20 else "regression"


def build_pipeline(X: pd.DataFrame, estimator: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in X.columns if datasets.kind_of(X[c]) in ("integer", "float", "boolean")]
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


def _grid_size(space: dict[str, Any]) -> int | None:
    if not all(isinstance(v, list) for v in space.values()):
        return None
    return int(np.prod([len(v) for v in space.values()])) if space else 1


@dataclass(frozen=True)
class Planned:
    """One candidate of a spec's search, before it is evaluated."""

    index: int  # position in the spec's full candidate list: the identity shards and select agree on
    model_index: int
    family: str
    params: dict[str, Any]  # estimator parameter -> value (without the pipeline prefix)


def plan_candidates(spec: TrainingSpec, task: Task) -> list[Planned]:
    """Every candidate of the spec, in a fixed order: per family the whole grid when it has at most
    `n_iter` points, else `n_iter` draws of scikit-learn's ParameterSampler seeded with the spec's seed
    (exactly what GridSearchCV / RandomizedSearchCV would try)."""
    from sklearn.model_selection import ParameterGrid, ParameterSampler

    planned: list[Planned] = []
    for model_index, model in enumerate(spec.models):
        space = search_space(model, model_index, make_estimator(model.family, task, spec.seed))
        size = _grid_size(space)
        points = (ParameterGrid(space) if size is not None and size <= spec.search.n_iter  # {} is one point
                  else ParameterSampler(space, n_iter=spec.search.n_iter, random_state=spec.seed))
        for params in points:
            planned.append(Planned(len(planned), model_index, model.family,
                                   {k.removeprefix("model__"): _plain(v) for k, v in params.items()}))
    return planned


def shard_candidates(planned: list[Planned], shard: int, shards: int) -> list[Planned]:
    """Shard `shard` of `shards` takes candidates shard, shard + shards, ...: no overlap, no gap."""
    if not 0 <= shard < shards:
        raise SpecError(f"--shard {shard}: must be in 0..{shards - 1} for --shards {shards}")
    return planned[shard::shards]


def best_first(candidates: list[Candidate], metric: Metric) -> list[Candidate]:
    """Best first; ties keep the spec's candidate order, so sharded and unsharded runs pick the same one."""
    return sorted(candidates, key=lambda c: (-c.cv_score if metric.greater_is_better else c.cv_score, c.index))


def evaluate(
    spec: TrainingSpec, task: Task, metric: Metric, n_classes: int, X: pd.DataFrame, y: pd.Series,
    planned: list[Planned], on_family: Callable[[str, int], None] | None = None,
) -> list[Candidate]:
    """Cross-validate the given candidates (training split only), all cores; best first."""
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    folds = (StratifiedKFold if task == "classification" else KFold)(
        n_splits=spec.search.cv, shuffle=True, random_state=spec.seed
    )
    sign = 1.0 if metric.greater_is_better else -1.0
    candidates: list[Candidate] = []
    for model_index, model in enumerate(spec.models):
        mine = [p for p in planned if p.model_index == model_index]
        if not mine:
            continue
        pipeline = build_pipeline(X, make_estimator(model.family, task, spec.seed))
        # A grid of single points is exactly this list, evaluated in parallel over candidates x folds.
        grid = [{f"model__{k}": [v] for k, v in p.params.items()} for p in mine]
        search = GridSearchCV(pipeline, grid, scoring=scorer_name(metric, n_classes), cv=folds, n_jobs=-1,
                              refit=False, error_score="raise")
        search.fit(X, y)
        results = search.cv_results_
        for i, p in enumerate(mine):
            candidates.append(Candidate(
                index=p.index, family=p.family, params=p.params,
                cv_score=sign * float(results["mean_test_score"][i]),
                cv_std=float(results["std_test_score"][i]),
                fit_seconds=float(results["mean_fit_time"][i]),
            ))
        if on_family:
            on_family(model.family, len(mine))
    return best_first(candidates, metric)


def run_search(
    spec: TrainingSpec, task: Task, metric: Metric, n_classes: int, X: pd.DataFrame, y: pd.Series,
    on_family: Callable[[str, int], None] | None = None,
) -> list[Candidate]:
    """Search every family's space with cross-validation; every candidate, best first."""
    return evaluate(spec, task, metric, n_classes, X, y, plan_candidates(spec, task), on_family)


def _plain(value: Any) -> Any:
    """numpy scalars to Python, so params survive JSON and MLflow."""
    return value.item() if isinstance(value, np.generic) else value


# --- lineage helpers ------------------------------------------------------------------------


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def beats(new: float, old: float, metric: Metric, margin: float) -> bool:
    return new >= old + margin if metric.greater_is_better else new <= old - margin


def passes_floor(value: float, metric: Metric, floor: float | None) -> bool:
    if floor is None:
        return True
    return value >= floor if metric.greater_is_better else value <= floor


def _permutation_importance(model: Any, X: pd.DataFrame, y: pd.Series, scoring: str | None, seed: int) -> pd.DataFrame:
    from sklearn.inspection import permutation_importance

    result = permutation_importance(model, X, y, scoring=scoring, n_repeats=5, random_state=seed, n_jobs=-1)
    table = pd.DataFrame({
        "feature": list(X.columns),
        "importance_mean": result.importances_mean,
        "importance_std": result.importances_std,
    })
    return table.sort_values("importance_mean", ascending=False, ignore_index=True)


def _importance_figure(table: pd.DataFrame, metric: str) -> Any:
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


# --- champion -------------------------------------------------------------------------------


class ChampionScore(BaseModel):
    version: str | None = None
    value: float | None = None
    error: str | None = None


def score_champion(
    client: Any, name: str, X: pd.DataFrame, y: pd.Series, metric: Metric, n_classes: int
) -> ChampionScore:
    """The current champion's metric on this holdout (its sklearn model, so probabilities count)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return ChampionScore()  # no registered model, or no champion yet
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").get_raw_model()
        return ChampionScore(version=current.version, value=score(model, X, y, metric, n_classes))
    except Exception as exc:  # a champion with other features, or a broken artifact: never auto-replace it
        return ChampionScore(version=current.version, error=f"{type(exc).__name__}: {exc}")


def decide(new: float, champion: ChampionScore, metric: Metric, promotion: PromotionSpec) -> tuple[str, str]:
    if not passes_floor(new, metric, promotion.floor):
        return CHALLENGER, f"{metric.name} {new:.4f} does not pass the floor {promotion.floor}"
    if champion.version is None:
        return CHAMPION, "no champion yet" + ("" if promotion.floor is None else f"; passes the floor {promotion.floor}")
    if champion.value is None:
        return CHALLENGER, f"champion v{champion.version} could not be scored on this holdout ({champion.error})"
    if beats(new, champion.value, metric, promotion.margin):
        return CHAMPION, (
            f"{metric.name} {new:.4f} beats champion v{champion.version} ({champion.value:.4f}) "
            f"by the margin {promotion.margin}"
        )
    return CHALLENGER, (
        f"{metric.name} {new:.4f} does not beat champion v{champion.version} ({champion.value:.4f}) "
        f"by the margin {promotion.margin}"
    )


def register(
    client: Any, name: str, model_uri: str, model_id: str | None, run_id: str, tags: dict[str, str], decision: str
) -> str:
    """Register, tag and alias one version; on any failure delete it again and re-raise."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, model_id=model_id, await_creation_for=0
    )
    try:
        _wait_ready(client, name, version.version)
        set_alias(client, name, decision, version.version)
    except BaseException:
        try:
            client.delete_model_version(name, version.version)
        except Exception as cleanup:  # report both: the version may need manual removal
            raise TrainingError(
                f"registering {name} v{version.version} failed and deleting it failed too: {cleanup}"
            ) from cleanup
        raise
    return str(version.version)


def set_alias(client: Any, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version` (a seam so tests can inject a failure at the last step)."""
    client.set_registered_model_alias(name, alias, version)


def _wait_ready(client: Any, name: str, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise TrainingError(f"{name} v{version}: registration status {status}")
        time.sleep(0.2)


# --- the job --------------------------------------------------------------------------------


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not enabled, transient=False,
    )


@dataclass
class Prepared:
    """Validated data, split the way every step of a job (search shard, select, train) splits it."""

    df: pd.DataFrame
    schema: datasets.DatasetSchema
    schema_is_new: bool  # no stored and no explicit schema: train() stores this inferred one
    digest: str
    task: Task
    metric: Metric
    n_classes: int
    X_train: pd.DataFrame
    y_train: pd.Series
    X_hold: pd.DataFrame
    y_hold: pd.Series


def prepare(spec: TrainingSpec, outputs: StackOutputs, data: pd.DataFrame | None = None) -> Prepared:
    """Read (unless `data` is given), validate and split; raises before anything is logged or stored."""
    if data is None:
        if not spec.dataset.source:
            raise SpecError("dataset.source: required unless data is passed in")
        data = datasets.load(format_uri(spec.dataset.source, outputs), outputs)
    df = data.reset_index(drop=True)
    if spec.target not in df.columns:
        raise datasets.DataValidationError(spec.dataset.name, [datasets.Violation(
            column=spec.target, check="missing_column", message="the target column is missing")])
    stored_schema = datasets.load_schema(spec.dataset.name, outputs)
    schema = spec.dataset.data_schema or stored_schema or datasets.DatasetSchema.infer(df)
    datasets.check(df, schema, spec.dataset.name)
    if df[spec.target].isna().any():
        raise datasets.DataValidationError(spec.dataset.name, [datasets.Violation(
            column=spec.target, check="null_rate", message="the target has missing values")])
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
    for index, model in enumerate(spec.models):  # spec errors before any work is done
        search_space(model, index, make_estimator(model.family, task, spec.seed))
    train_df, holdout_df = datasets.split(
        df, spec.target, classification=task == "classification", seed=spec.seed,
        holdout_fraction=spec.holdout_fraction,
    )
    features = [c for c in df.columns if c != spec.target and c not in spec.exclude]
    return Prepared(
        df=df, schema=schema, schema_is_new=stored_schema is None and spec.dataset.data_schema is None,
        digest=datasets.digest(df), task=task, metric=metric, n_classes=n_classes,
        X_train=train_df[features], y_train=train_df[spec.target],
        X_hold=holdout_df[features], y_hold=holdout_df[spec.target],
    )


def _start_tracking(outputs: StackOutputs) -> None:
    import mlflow

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # keeps `--json` output clean
    outputs.apply_env()
    mlflow.set_tracking_uri(outputs.tracking_uri)


def train(
    spec: TrainingSpec,
    outputs: StackOutputs,
    *,
    data: pd.DataFrame | None = None,
    progress: bool = True,
    candidates: list[Candidate] | None = None,
    run_tags: dict[str, str] | None = None,
) -> TrainResult:
    """Run one training job; see the module docstring. `data` overrides the spec's source.

    `candidates` (already cross-validated, e.g. by search shards; see `select`) replaces the search:
    the best of them is refitted, scored, logged, registered and gated exactly like a searched one.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    _start_tracking(outputs)

    # 1. data: read and validate before anything is logged
    prep = prepare(spec, outputs, data)
    if candidates is not None and not candidates:
        raise TrainingError("no candidates to choose from")
    df, task, metric, n_classes = prep.df, prep.task, prep.metric, prep.n_classes
    X_train, y_train, X_hold, y_hold = prep.X_train, prep.y_train, prep.X_hold, prep.y_hold

    # 2. version (the split is in prepare)
    version_info = datasets.store(df, spec.dataset.name, outputs, content_digest=prep.digest)
    if prep.schema_is_new:
        datasets.save_schema(spec.dataset.name, prep.schema, outputs)

    client = MlflowClient()
    mlflow.set_experiment(spec.experiment or spec.name)
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    commit = git_commit()
    lineage = {
        "mlops.dataset.name": spec.dataset.name,
        "mlops.dataset.digest": version_info.digest,
        "mlops.dataset.uri": version_info.uri,
        "mlops.spec.hash": spec.spec_hash(),
        "mlops.target": spec.target,
        "mlops.task": task,
        "mlops.metric": metric.name,
        "mlops.split.seed": str(spec.seed),
        "mlops.split.holdout_fraction": str(spec.holdout_fraction),
        **({"mlops.git.commit": commit} if commit else {}),
    }

    # 3. search (unless given the candidates), fit, log
    with mlflow.start_run(run_name=f"train-{spec.name}") as run:
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        with warnings.catch_warnings():  # the dataset's own schema is informational; ints are fine there
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            dataset = mlflow.data.from_pandas(
                df, source=version_info.uri, name=spec.dataset.name, targets=spec.target, digest=version_info.digest
            )
            mlflow.log_input(dataset, context="training")
        mlflow.log_text(spec_yaml, "spec.yaml")
        mlflow.log_dict(prep.schema.model_dump(), "schema.json")
        mlflow.set_tags(lineage | (run_tags or {}))
        with _progress(progress) as bar:
            if candidates is None:
                planned = plan_candidates(spec, task)
                job = bar.add_task(f"searching {len(spec.models)} famil{'y' if len(spec.models) == 1 else 'ies'}",
                                   total=len(planned))
                candidates = evaluate(
                    spec, task, metric, n_classes, X_train, y_train, planned,
                    on_family=lambda family, n: bar.update(job, advance=n, description=f"searched {family}"),
                )
                _log_candidates(client, run_id, experiment_id, candidates, metric)
            else:  # searched elsewhere (the shards' runs hold the per-candidate details)
                candidates = best_first(candidates, metric)
                job = bar.add_task(f"{len(candidates)} candidates searched", total=len(candidates),
                                   completed=len(candidates))
            mlflow.log_dict([c.model_dump() for c in candidates], "candidates.json")
            best = candidates[0]
            bar.update(job, description=f"fitting {best.family} on {len(X_train)} rows")
            model = build_pipeline(X_train, make_estimator(best.family, task, spec.seed))
            model.set_params(**{f"model__{k}": v for k, v in best.params.items()})
            model.fit(X_train, y_train)
            holdout = {
                m.name: score(model, X_hold, y_hold, m, n_classes)
                for m in METRICS.values()
                if m.task == task and scorer_name(m, n_classes) is not None
            }
            value = holdout[metric.name]
            bar.update(job, description="permutation importance")
            importance = _permutation_importance(model, X_hold, y_hold, scorer_name(metric, n_classes), spec.seed)
            bar.update(job, description="logging the model")
            mlflow.log_params({"best.family": best.family, **{f"best.{k}": v for k, v in best.params.items()},
                               "task": task, "metric": metric.name, "seed": spec.seed,
                               "n_train": len(X_train), "n_holdout": len(X_hold)})
            mlflow.log_metrics({f"holdout.{k}": v for k, v in holdout.items()} | {
                f"cv.{metric.name}": best.cv_score})
            mlflow.log_text(importance.to_csv(index=False), "permutation_importance.csv")
            mlflow.log_figure(_importance_figure(importance, metric.name), "permutation_importance.png")
            example = X_train.head(5)
            # Integer features stay integers in the signature (what clients send); MLflow's hint
            # about missing values in integer columns is noise in a job log.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
                info = _log_model(model, example)

            # 4. the champion on the same holdout
            bar.update(job, description="scoring the champion")
            champion = score_champion(client, spec.name, X_hold, y_hold, metric, n_classes)
            decision, reason = decide(value, champion, metric, spec.promotion)
            mlflow.set_tags({"mlops.decision": decision, "mlops.decision.reason": reason})

            # 5. register last
            bar.update(job, description=f"registering as {decision}")
            tags = lineage | {
                "mlops.metric.value": repr(value),
                "mlops.decision": decision,
                "mlops.run_id": run_id,
            }
            version = register(client, spec.name, info.model_uri, info.model_id, run_id, tags, decision)
            bar.update(job, description=f"{spec.name} v{version}: {decision}")

    return TrainResult(
        model_name=spec.name, version=version, decision=decision, reason=reason, metric=metric.name,
        metric_value=value, holdout_metrics=holdout, champion_version_before=champion.version,
        champion_metric_before=champion.value, dataset_name=spec.dataset.name, dataset_digest=version_info.digest,
        dataset_uri=version_info.uri, dataset_uploaded=version_info.uploaded, task=task, best_family=best.family,
        best_params=best.params, n_candidates=len(candidates), run_id=run_id, experiment_id=experiment_id,
        seconds=round(time.monotonic() - started, 2),
    )


# --- the search across pods: shards, then select --------------------------------------------
# Shards and select must agree on a group id without talking to each other. By default it is
# the spec hash plus the data digest: the same spec on the same data is the same search (its
# results are deterministic), so a re-run shard just adds a newer run and select takes the
# latest finished one per shard. `--group` / MLOPS_SEARCH_GROUP can name a group explicitly.

GROUP_TAG, SHARD_TAG, SHARDS_TAG = "mlops.search.group", "mlops.search.shard", "mlops.search.shards"
CANDIDATES_ARTIFACT = "candidates.json"


def default_group(spec: TrainingSpec, digest: str) -> str:
    return f"{spec.spec_hash()}-{digest[:12]}"


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


def search_shard(
    spec: TrainingSpec, outputs: StackOutputs, shard: int, shards: int, *,
    group: str | None = None, data: pd.DataFrame | None = None, progress: bool = True,
) -> ShardResult:
    """Cross-validate this shard's candidates (training split only) and log them as runs; no registration."""
    import mlflow
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    _start_tracking(outputs)
    prep = prepare(spec, outputs, data)
    mine = shard_candidates(plan_candidates(spec, prep.task), shard, shards)
    group = group or default_group(spec, prep.digest)
    client = MlflowClient()
    mlflow.set_experiment(spec.experiment or spec.name)
    tags = {
        GROUP_TAG: group, SHARD_TAG: str(shard), SHARDS_TAG: str(shards),
        "mlops.spec.hash": spec.spec_hash(), "mlops.dataset.name": spec.dataset.name,
        "mlops.dataset.digest": prep.digest, "mlops.task": prep.task, "mlops.metric": prep.metric.name,
    }
    with mlflow.start_run(run_name=f"search-{spec.name}-{shard}of{shards}", tags=tags) as run:
        with _progress(progress) as bar:
            job = bar.add_task(f"shard {shard}/{shards}: {len(mine)} candidates", total=len(mine))
            candidates = evaluate(
                spec, prep.task, prep.metric, prep.n_classes, prep.X_train, prep.y_train, mine,
                on_family=lambda family, n: bar.update(job, advance=n, description=f"searched {family}"),
            )
        _log_candidates(client, run.info.run_id, run.info.experiment_id, candidates, prep.metric,
                        tags={GROUP_TAG: group, SHARD_TAG: str(shard)})
        mlflow.log_metric("n_candidates", len(candidates))
        if candidates:
            mlflow.log_metric(f"best.cv.{prep.metric.name}", candidates[0].cv_score)
        # Written last: a FINISHED shard run always has its complete list.
        mlflow.log_dict([c.model_dump() for c in candidates], CANDIDATES_ARTIFACT)
    return ShardResult(
        model_name=spec.name, group=group, shard=shard, shards=shards, n_candidates=len(candidates),
        best=candidates[0] if candidates else None, dataset_digest=prep.digest, run_id=run.info.run_id,
        seconds=round(time.monotonic() - started, 2),
    )


def finished_shards(client: Any, experiment_id: str, group: str, shards: int) -> tuple[dict[int, Any], dict[int, str]]:
    """The latest FINISHED run per shard of `group`, and the latest status of shards without one."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{GROUP_TAG}` = '{group}' and tags.`{SHARDS_TAG}` = '{shards}'",
        order_by=["attributes.start_time DESC"], max_results=1000,
    )
    finished: dict[int, Any] = {}
    latest: dict[int, str] = {}
    for r in runs:  # newest first
        shard = int(r.data.tags[SHARD_TAG])
        latest.setdefault(shard, r.info.status)
        if r.info.status == "FINISHED":
            finished.setdefault(shard, r)
    return finished, {s: latest.get(s, "no run") for s in range(shards) if s not in finished}


def select(
    spec: TrainingSpec, outputs: StackOutputs, shards: int, *,
    group: str | None = None, data: pd.DataFrame | None = None, progress: bool = True,
    timeout: float = 3600.0, poll_seconds: float = 10.0,
) -> TrainResult:
    """Wait for every shard of the group, then train() on the union of their candidates.

    Fails with TrainingError naming the missing shards after `timeout` seconds; nothing is
    registered unless every shard finished with this spec and this data.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    if shards < 1:
        raise SpecError(f"--shards {shards}: must be at least 1")
    _start_tracking(outputs)
    prep = prepare(spec, outputs, data)
    group = group or default_group(spec, prep.digest)
    client = MlflowClient()
    deadline = time.monotonic() + timeout
    finished: dict[int, Any]
    while True:
        experiment = client.get_experiment_by_name(spec.experiment or spec.name)
        if experiment is None:
            finished, missing = {}, {s: "no run" for s in range(shards)}
        else:
            finished, missing = finished_shards(client, experiment.experiment_id, group, shards)
        if not missing:
            break
        if time.monotonic() >= deadline:
            listed = ", ".join(f"{s} ({status})" for s, status in sorted(missing.items()))
            raise TrainingError(
                f"search group {group!r}: {len(missing)} of {shards} shard(s) have no finished run after "
                f"{timeout:g} s: {listed}; run `mlops train SPEC --shard I --shards {shards}` for each "
                "(with the same spec and data); nothing was registered"
            )
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

    planned = plan_candidates(spec, prep.task)
    candidates: list[Candidate] = []
    for shard, run in sorted(finished.items()):
        for key, expected in (("mlops.spec.hash", spec.spec_hash()), ("mlops.dataset.digest", prep.digest)):
            if run.data.tags.get(key) != expected:
                raise TrainingError(f"shard {shard} (run {run.info.run_id}) has {key} {run.data.tags.get(key)}, "
                                    f"this job {expected}: re-run the shards with the same spec and data")
        logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{CANDIDATES_ARTIFACT}")
        candidates += [Candidate.model_validate(c) for c in logged]
    # Each candidate exactly once: what a single unsharded search would have evaluated.
    got = sorted(c.index for c in candidates)
    if got != list(range(len(planned))):
        raise TrainingError(f"search group {group!r}: the shards evaluated candidates {got}, expected "
                            f"0..{len(planned) - 1} once each; nothing was registered")
    # The spec's own parameter values (typed), with the shards' scores.
    candidates = [c.model_copy(update={"params": planned[c.index].params}) for c in candidates]
    return train(spec, outputs, data=prep.df, progress=progress, candidates=candidates,
                 run_tags={GROUP_TAG: group, SHARDS_TAG: str(shards)})


def _log_model(model: Any, example: pd.DataFrame) -> Any:
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.utils.requirements_utils import _get_pinned_requirement
    from skops.io import dumps as skops_dumps
    from skops.io import get_untrusted_types

    return mlflow.sklearn.log_model(
        model, name=MODEL_ARTIFACT, signature=infer_signature(example, model.predict(example)),
        input_example=example,
        # skops, not pickle: loading cannot run arbitrary code. skops still asks which of the
        # model's types to trust (numpy dtypes, gradient-boosting trees): exactly those of the
        # model this job just fitted, recorded with it; loaders only take models from our registry.
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=get_untrusted_types(data=skops_dumps(model)),
        # Known requirements: mlflow's inference imports the model in a subprocess (4 s here).
        pip_requirements=[
            *mlflow.sklearn.get_default_pip_requirements(include_skops=True),
            *(_get_pinned_requirement(p) for p in ("numpy", "pandas", "scipy")),
        ],
    )


def _log_candidates(
    client: Any, run_id: str, experiment_id: str, candidates: list[Candidate], metric: Metric,
    tags: dict[str, str] | None = None,
) -> None:
    """One nested run per candidate, each written with a single log_batch call."""
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.entities import Param, RunTag

    now = int(time.time() * 1000)
    for rank, c in enumerate(candidates, start=1):
        child = client.create_run(
            experiment_id,
            tags={"mlflow.parentRunId": run_id, "mlflow.runName": f"{c.family}-{rank}", "mlops.family": c.family,
                  "mlops.candidate.index": str(c.index), **(tags or {})},
        )
        client.log_batch(
            child.info.run_id,
            metrics=[
                MlflowMetric(f"cv.{metric.name}", c.cv_score, now, 0),
                MlflowMetric(f"cv.{metric.name}.std", c.cv_std, now, 0),
                MlflowMetric("fit_seconds", c.fit_seconds, now, 0),
                MlflowMetric("rank", rank, now, 0),
            ],
            params=[Param("family", c.family)] + [Param(k, str(v)) for k, v in c.params.items()],
            tags=[RunTag("mlops.candidate.rank", str(rank))],
        )
        client.set_terminated(child.info.run_id)


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
        ("dataset", f"{result.dataset_name} {result.dataset_digest} "
                    f"({'stored' if result.dataset_uploaded else 'already stored'})"),
        ("run", result.run_id),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


# --- the command ---------------------------------------------------------------------------


def run_settings(settings: Any, outputs: StackOutputs, *, progress: bool) -> ShardResult | TrainResult:
    """What `mlops train` runs: one training, a search shard or the selection step (TrainSettings)."""
    from workloads.errors import ServiceUnavailable

    spec = TrainingSpec.from_yaml(settings.spec)
    outputs.apply_env()
    try:
        data = datasets.load(format_uri(settings.data, outputs, "--data"), outputs) if settings.data else None
        if settings.shard is not None:
            return search_shard(spec, outputs, settings.shard, settings.shards, group=settings.group, data=data,
                                progress=progress)
        if settings.select:
            return select(spec, outputs, settings.shards, group=settings.group, data=data, progress=progress,
                          timeout=settings.wait_timeout)
        return train(spec, outputs, data=data, progress=progress)
    except MlopsError:
        raise
    except Exception as exc:  # a server went away mid-run: one line, not a traceback wall
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException | OSError) and "botocore" not in type(exc).__module__:
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ServiceUnavailable(f"training failed, nothing registered: {type(exc).__name__} talking to "
                                 f"{outputs.tracking_uri} or its artifact store: {first_line}") from None
