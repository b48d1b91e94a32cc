"""A dataset's schema and the validation of data against it.

`DatasetSchema` records, per column, its dtype kind, allowed categories, value range and
maximum null rate. It is inferred from the first version of a dataset (and stored with it,
see `dataset.save_schema`), or given explicitly in a training spec. `validate(df, schema)`
returns every violation; `check(df, schema, name)` raises `DataValidationError` with a
readable report of all of them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from workloads.errors import ValidationFailed

Kind = Literal["integer", "float", "boolean", "string", "datetime"]
NUMERIC_KINDS = ("integer", "float")
# Inferred ranges get this much slack (as a fraction of the observed span) on each side, so
# the next month's data is not rejected for a customer one month older than any seen so far.
RANGE_SLACK = 0.25
# Inferred null-rate limits: twice the observed rate, and never below this.
MIN_NULL_RATE_LIMIT = 0.05
# A string column with at most this many distinct values is treated as categorical.
MAX_CATEGORIES = 50


def kind_of(col: pd.Series) -> Kind:
    if pd.api.types.is_bool_dtype(col):
        return "boolean"
    if pd.api.types.is_integer_dtype(col):
        return "integer"
    if pd.api.types.is_float_dtype(col):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(col):
        return "datetime"
    return "string"


class ColumnSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    categories: list[str] | None = Field(None, description="allowed values (string columns)")
    min: float | None = None
    max: float | None = None
    max_null_rate: float = Field(0.0, ge=0.0, le=1.0)

    @classmethod
    def infer(cls, col: pd.Series) -> ColumnSchema:
        """One column of a first version: its kind, categories, range (with slack) and null rate."""
        kind = kind_of(col)
        null_rate = float(col.isna().mean()) if len(col) else 0.0
        spec: dict[str, Any] = {
            "kind": kind,
            "max_null_rate": min(1.0, max(MIN_NULL_RATE_LIMIT, 2 * null_rate)) if null_rate else 0.0,
        }
        values = col.dropna()
        if kind in NUMERIC_KINDS and len(values):
            lo, hi = float(values.min()), float(values.max())
            slack = RANGE_SLACK * (hi - lo)
            # Counts and amounts that were never negative stay non-negative.
            spec["min"] = max(0.0, lo - slack) if lo >= 0 else lo - slack
            spec["max"] = hi + slack
        elif kind == "string" and 0 < values.nunique() <= MAX_CATEGORIES:
            spec["categories"] = sorted(str(v) for v in values.unique())
        return cls(**spec)


class DatasetSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: dict[str, ColumnSchema]

    @classmethod
    def infer(cls, df: pd.DataFrame) -> DatasetSchema:
        """The schema of a first version: every column inferred (see `ColumnSchema.infer`)."""
        return cls(columns={str(name): ColumnSchema.infer(df[name]) for name in df.columns})


class Violation(BaseModel):
    column: str
    check: Literal["missing_column", "wrong_dtype", "unseen_category", "out_of_range", "null_rate"]
    message: str

    def __str__(self) -> str:
        return f"{self.column}: {self.check}: {self.message}"


class DataValidationError(ValidationFailed, ValueError):
    """The data does not match its schema; `violations` lists every problem found."""

    kind = "data validation failed, nothing registered"

    def __init__(self, name: str, violations: list[Violation]):
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"dataset {name!r} failed validation ({len(violations)} violation(s)):\n{lines}")


def _compatible(expected: Kind, actual: Kind, col: pd.Series) -> bool:
    if expected == actual:
        return True
    if expected == "float" and actual == "integer":
        return True
    if expected == "integer" and actual == "float":
        # An integer column with missing values is read back as float: fine if whole numbers.
        values = col.dropna().to_numpy(dtype="float64")
        return bool(np.all(np.mod(values, 1) == 0))
    # A column of only missing values has no real dtype.
    return bool(col.isna().all())


def validate(df: pd.DataFrame, schema: DatasetSchema, *, columns: list[str] | None = None) -> list[Violation]:
    """Every violation of `schema` in `df` (only `columns`, when given). Extra columns are allowed."""
    found: list[Violation] = []
    for name, spec in schema.columns.items():
        if columns is not None and name not in columns:
            continue
        if name not in df.columns:
            found.append(Violation(column=name, check="missing_column", message="column is missing"))
            continue
        found += _column_violations(name, df[name], spec)
    return found


def _column_violations(name: str, col: pd.Series, spec: ColumnSchema) -> list[Violation]:
    actual = kind_of(col)
    if not _compatible(spec.kind, actual, col):
        # range and category checks make no sense on the wrong type
        return [Violation(column=name, check="wrong_dtype", message=f"expected {spec.kind}, got {actual} ({col.dtype})")]
    found: list[Violation] = []
    null_rate = float(col.isna().mean()) if len(col) else 0.0
    if null_rate > spec.max_null_rate:
        found.append(Violation(column=name, check="null_rate",
                               message=f"{null_rate:.1%} missing, above the limit of {spec.max_null_rate:.1%}"))
    values = col.dropna()
    if spec.categories is not None and len(values):
        unseen = sorted(set(values.astype(str).unique()) - set(spec.categories))
        if unseen:
            shown = ", ".join(repr(v) for v in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
            found.append(Violation(column=name, check="unseen_category",
                                   message=f"{len(unseen)} value(s) outside the allowed set: {shown}"))
    if spec.kind in NUMERIC_KINDS and len(values):
        lo, hi = float(values.min()), float(values.max())
        if (spec.min is not None and lo < spec.min) or (spec.max is not None and hi > spec.max):
            allowed = f"[{spec.min:g}, {spec.max:g}]" if spec.min is not None and spec.max is not None \
                else f"min {spec.min}, max {spec.max}"
            found.append(Violation(column=name, check="out_of_range",
                                   message=f"values span [{lo:g}, {hi:g}], allowed {allowed}"))
    return found


def check(df: pd.DataFrame, schema: DatasetSchema, name: str, *, columns: list[str] | None = None) -> None:
    violations = validate(df, schema, columns=columns)
    if violations:
        raise DataValidationError(name, violations)


def widen_ranges(schema: DatasetSchema, df: pd.DataFrame) -> tuple[DatasetSchema, list[str]]:
    """`schema` with its numeric ranges widened to cover `df`; the columns that changed.

    Retraining after drift: drifted values are what retraining is for, so they must not fail the
    range check; kinds, categories and null rates are still enforced.
    """
    columns, changes = dict(schema.columns), []
    for name, col in schema.columns.items():
        if name not in df.columns or col.kind not in ("integer", "float") or df[name].isna().all():
            continue
        lo, hi = float(df[name].min()), float(df[name].max())
        new_min = min(col.min, lo) if col.min is not None else None
        new_max = max(col.max, hi) if col.max is not None else None
        if (new_min, new_max) != (col.min, col.max):
            columns[name] = col.model_copy(update={"min": new_min, "max": new_max})
            changes.append(f"{name} [{new_min:g}, {new_max:g}]" if new_min is not None and new_max is not None
                           else name)
    return schema.model_copy(update={"columns": columns}), changes
