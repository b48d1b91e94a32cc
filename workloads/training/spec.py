"""The training spec (YAML): what to train on, which families to search, how to gate the result.

A spec names its data by path or URI; `{data_bucket}` and the other string fields of the stack
outputs contract are placeholders (`format_uri`), so one spec runs in every environment.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workloads.data.schema import DatasetSchema
from workloads.environment import StackOutputs
from workloads.training.errors import SpecError
from workloads.training.metrics import METRICS, Task
from workloads.training.models import KNOWN_FAMILIES, import_estimator

# --- stack placeholders in URIs ------------------------------------------------------------

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
    data_schema: DatasetSchema | None = Field(
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
    family: str | None = Field(None, description="a built-in family (models.py)")
    estimator: str | None = Field(None, description="or a scikit-learn-compatible estimator class by import path")
    # estimator parameter -> a list of choices, or {uniform|loguniform|randint: [low, high]}
    search_space: dict[str, list[Any] | dict[str, list[float]]] = {}

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_FAMILIES:
            raise ValueError(f"unknown family {value!r}; choose from {KNOWN_FAMILIES}")
        return value

    @field_validator("estimator")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            import_estimator(value)  # ValueError naming what is wrong: reported under the key
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ModelSpec:
        if (self.family is None) == (self.estimator is None):
            raise ValueError("give exactly one of family (built-in) or estimator (import path)")
        return self

    @property
    def name(self) -> str:
        """The family, or the estimator's import path: how candidates and runs name it."""
        return self.family or self.estimator or ""


# A tie must not promote: the margin is absolute, in the metric's own units (0.001 roc_auc,
# 0.001 rmse), and the challenger must beat the champion by MORE than it (workloads/training/gate.py).
DEFAULT_MARGIN = 0.001


class PromotionSpec(_Strict):
    margin: float = Field(DEFAULT_MARGIN, ge=0.0,
                          description="must beat the champion's metric by more than this (absolute)")
    floor: float | None = Field(None, description="the metric must reach this (or stay under, if lower is better)")
    max_forgetting: float = Field(
        0.05, ge=0.0, description="after drift: the challenger's metric on the champion's holdout may trail the "
                                  "champion's recorded holdout metric by at most this (absolute)")


class RetrainingSpec(_Strict):
    """How a retraining after drift uses the labelled captured rows (workloads/monitoring/retrain.py)."""

    recent_holdout: float = Field(0.5, gt=0.0, lt=1.0,
                                  description="share of the labelled captured rows held back for the gate")
    recent_weight: float = Field(1.0, gt=0.0, le=100.0,
                                 description="sample weight of the labelled captured rows the challenger trains on")


class IdColumnsSpec(_Strict):
    """Identifier-like feature columns (features.py): dropped with a message, or refused."""

    action: Literal["drop", "refuse"] = "drop"
    max_unique_ratio: float = Field(0.5, gt=0.0, le=1.0,
                                    description="a text column with more distinct values per row is an identifier")


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
    positive_class: str | int | bool | None = Field(
        None, description="binary targets: the class roc_auc, f1 and average_precision score [default: the "
                          "second of the sorted classes]")
    predict: Literal["label", "proba"] = Field(
        "label", description="what the served model returns: labels, or per-class probabilities (classifiers)")
    id_columns: IdColumnsSpec = IdColumnsSpec()
    promotion: PromotionSpec = PromotionSpec()
    retraining: RetrainingSpec = RetrainingSpec()
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
        if self.task == "regression" and (self.predict == "proba" or self.positive_class is not None):
            raise ValueError("predict: proba and positive_class are for classification, but task is regression")
        return self

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @classmethod
    def from_yaml(cls, path: Path | str) -> TrainingSpec:
        """The spec in `path`; a relative `dataset.source` is relative to the spec file, not the current directory."""
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: {exc}") from None
        spec = cls.parse(raw, str(path))
        source = spec.dataset.source
        if source is None or "://" in source or source.startswith("{") or Path(source).expanduser().is_absolute():
            return spec
        anchored = str((Path(path).resolve().parent / source).resolve())
        return spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"source": anchored})})

    @classmethod
    def parse(cls, raw: Any, source: str = "spec") -> TrainingSpec:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
            )
            raise SpecError(f"{source}: {problems}") from None

    def to_yaml(self) -> str:
        """The spec as logged with each run (`spec.yaml`): what `parse` reads back to the same spec."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def widened_for(spec: TrainingSpec, newest: Any, env: Any) -> tuple[TrainingSpec, str]:
    """The spec with its dataset schema's numeric ranges widened to cover `newest` (retraining after drift).

    Drifted values are what retraining is for, so they must not fail the range check; kinds,
    categories and null rates are still enforced. The stored schema itself is left unchanged.
    Used by the in-process retraining and by a retraining Job (`mlops train --retraining`).
    """
    from workloads.data import dataset
    from workloads.data.schema import widen_ranges

    schema = spec.dataset.data_schema or dataset.load_schema(spec.dataset.name, env)
    if schema is None:
        return spec, ""
    widened, changes = widen_ranges(schema, newest)
    data_spec = spec.dataset.model_copy(update={"data_schema": widened})
    return spec.model_copy(update={"dataset": data_spec}), ", ".join(changes)
