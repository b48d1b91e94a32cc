"""Datasets: ingest, validate against a schema, version by content digest, split.

- `load(source)` reads CSV or Parquet from a local path or an `s3://bucket/key` URI.
- `DatasetSchema` records, per column, its dtype kind, allowed categories, value range and
  maximum null rate. It is inferred from the first version of a dataset and stored at
  `s3://<data_bucket>/datasets/<name>/schema.json`, or given explicitly in a training spec.
- `validate(df, schema)` returns every violation; `check(df, schema)` raises
  `DataValidationError` with a readable report of all of them.
- `store(df, name, outputs)` writes the data once, content-addressed, at
  `s3://<data_bucket>/datasets/<name>/<digest>/data.parquet`.
- `split(df, target, ...)` is the deterministic, seeded (stratified for classification)
  train/holdout split that training records and monitoring reuses.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from workloads.environment import StackOutputs
from workloads.errors import UsageError, ValidationFailed

Kind = Literal["integer", "float", "boolean", "string", "datetime"]
NUMERIC_KINDS = ("integer", "float")
# Inferred ranges get this much slack (as a fraction of the observed span) on each side, so
# the next month's data is not rejected for a customer one month older than any seen so far.
RANGE_SLACK = 0.25
# Inferred null-rate limits: twice the observed rate, and never below this.
MIN_NULL_RATE_LIMIT = 0.05
# A string column with at most this many distinct values is treated as categorical.
MAX_CATEGORIES = 50
DIGEST_CHARS = 32  # 128 bits of sha256; MLflow's dataset digest column holds 36 characters


class DataError(UsageError, ValueError):
    kind = "DataError"

    """A dataset could not be read."""


class ColumnSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind
    categories: list[str] | None = Field(None, description="allowed values (string columns)")
    min: float | None = None
    max: float | None = None
    max_null_rate: float = Field(0.0, ge=0.0, le=1.0)


class DatasetSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: dict[str, ColumnSchema]

    @classmethod
    def infer(cls, df: pd.DataFrame) -> DatasetSchema:
        """The schema of a first version: its kinds, categories, ranges (with slack) and null rates."""
        columns: dict[str, ColumnSchema] = {}
        for name in df.columns:
            col = df[name]
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
            columns[str(name)] = ColumnSchema(**spec)
        return cls(columns=columns)


class Violation(BaseModel):
    column: str
    check: Literal["missing_column", "wrong_dtype", "unseen_category", "out_of_range", "null_rate"]
    message: str

    def __str__(self) -> str:
        return f"{self.column}: {self.check}: {self.message}"


class DataValidationError(ValidationFailed, ValueError):
    kind = "data validation failed, nothing registered"

    """The data does not match its schema; `violations` lists every problem found."""

    def __init__(self, name: str, violations: list[Violation]):
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"dataset {name!r} failed validation ({len(violations)} violation(s)):\n{lines}")


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
        col = df[name]
        actual = kind_of(col)
        if not _compatible(spec.kind, actual, col):
            found.append(Violation(
                column=name, check="wrong_dtype", message=f"expected {spec.kind}, got {actual} ({col.dtype})"
            ))
            continue  # range and category checks make no sense on the wrong type
        null_rate = float(col.isna().mean()) if len(col) else 0.0
        if null_rate > spec.max_null_rate:
            found.append(Violation(
                column=name, check="null_rate",
                message=f"{null_rate:.1%} missing, above the limit of {spec.max_null_rate:.1%}",
            ))
        values = col.dropna()
        if spec.categories is not None and len(values):
            unseen = sorted(set(values.astype(str).unique()) - set(spec.categories))
            if unseen:
                shown = ", ".join(repr(v) for v in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
                found.append(Violation(
                    column=name, check="unseen_category",
                    message=f"{len(unseen)} value(s) outside the allowed set: {shown}",
                ))
        if spec.kind in NUMERIC_KINDS and len(values):
            lo, hi = float(values.min()), float(values.max())
            below = spec.min is not None and lo < spec.min
            above = spec.max is not None and hi > spec.max
            if below or above:
                found.append(Violation(
                    column=name, check="out_of_range",
                    message=f"values span [{lo:g}, {hi:g}], allowed [{spec.min:g}, {spec.max:g}]"
                    if spec.min is not None and spec.max is not None
                    else f"values span [{lo:g}, {hi:g}], allowed min {spec.min}, max {spec.max}",
                ))
    return found


def check(df: pd.DataFrame, schema: DatasetSchema, name: str, *, columns: list[str] | None = None) -> None:
    violations = validate(df, schema, columns=columns)
    if violations:
        raise DataValidationError(name, violations)


# --- ingest ---------------------------------------------------------------------------------


def _format(source: str) -> Literal["csv", "parquet"]:
    lower = source.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(f"{source}: unknown format; expected a .csv, .csv.gz, .parquet or .pq file")


def load(source: str, outputs: StackOutputs | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file from a local path or an s3:// URI (S3 needs `outputs`)."""
    fmt = _format(source)
    if source.startswith("s3://"):
        if outputs is None:
            raise DataError(f"{source}: reading from S3 needs the stack outputs")
        url = urlparse(source)
        client = outputs.s3_client()
        try:
            body = client.get_object(Bucket=url.netloc, Key=url.path.lstrip("/"))["Body"].read()
        except client.exceptions.NoSuchKey:
            raise DataError(f"{source}: no such object") from None
        except client.exceptions.ClientError as exc:
            raise DataError(f"{source}: {exc}") from None
        handle: Any = io.BytesIO(body)
        compression = "gzip" if source.lower().endswith(".gz") else None
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{source}: no such file")
        handle, compression = path, "infer"
    try:
        if fmt == "csv":
            return pd.read_csv(handle, compression=compression)
        return pd.read_parquet(handle)
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise DataError(f"{source}: could not read as {fmt}: {exc}") from None


# --- versioning -----------------------------------------------------------------------------


def digest(df: pd.DataFrame) -> str:
    """Content digest: the same rows and columns give the same digest, whatever the library versions.

    Hashes a canonical encoding (columns sorted by name; per column its name, kind, null
    mask and values as little-endian int64/float64 or length-prefixed UTF-8), not a file
    format whose bytes could change with pandas or pyarrow.
    """
    h = hashlib.sha256()
    h.update(f"rows={len(df)}\n".encode())
    for name in sorted(df.columns, key=str):
        col = df[name]
        kind = kind_of(col)
        nulls = col.isna().to_numpy()
        h.update(f"{name}\x1f{kind}\x1f".encode())
        h.update(np.packbits(nulls).tobytes())
        values = col[~nulls]
        if kind in ("integer", "boolean"):
            h.update(values.to_numpy(dtype="<i8").tobytes())
        elif kind == "float":
            h.update(values.to_numpy(dtype="<f8").tobytes())
        elif kind == "datetime":
            h.update(pd.to_datetime(values, utc=True).astype("int64").to_numpy(dtype="<i8").tobytes())
        else:
            for v in values.astype(str):
                b = v.encode()
                h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:DIGEST_CHARS]


class DatasetVersion(BaseModel):
    name: str
    digest: str
    uri: str
    rows: int
    uploaded: bool  # False when the same content was already stored


def dataset_prefix(name: str) -> str:
    return f"datasets/{name}/"


def _exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def store(df: pd.DataFrame, name: str, outputs: StackOutputs, *, content_digest: str | None = None) -> DatasetVersion:
    """Store `df` once at `s3://<data_bucket>/datasets/<name>/<digest>/data.parquet`."""
    content_digest = content_digest or digest(df)
    key = f"{dataset_prefix(name)}{content_digest}/data.parquet"
    client = outputs.s3_client()
    uploaded = False
    if not _exists(client, outputs.data_bucket, key):
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
        client.put_object(Bucket=outputs.data_bucket, Key=key, Body=buffer.getvalue())
        uploaded = True
    return DatasetVersion(
        name=name, digest=content_digest, uri=f"s3://{outputs.data_bucket}/{key}", rows=len(df), uploaded=uploaded
    )


def load_schema(name: str, outputs: StackOutputs) -> DatasetSchema | None:
    client = outputs.s3_client()
    try:
        body = client.get_object(Bucket=outputs.data_bucket, Key=f"{dataset_prefix(name)}schema.json")["Body"]
    except client.exceptions.NoSuchKey:
        return None
    return DatasetSchema.model_validate_json(body.read())


def save_schema(name: str, schema: DatasetSchema, outputs: StackOutputs) -> str:
    key = f"{dataset_prefix(name)}schema.json"
    outputs.s3_client().put_object(
        Bucket=outputs.data_bucket, Key=key, Body=json.dumps(schema.model_dump(), indent=2).encode()
    )
    return f"s3://{outputs.data_bucket}/{key}"


# --- split ----------------------------------------------------------------------------------


def split(
    df: pd.DataFrame, target: str, *, classification: bool, seed: int, holdout_fraction: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/holdout split, stratified on the target for classification."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < holdout_fraction < 1.0 or math.isnan(holdout_fraction):
        raise ValueError(f"holdout_fraction must be within (0, 1), got {holdout_fraction}")
    train, holdout = train_test_split(
        df, test_size=holdout_fraction, random_state=seed, stratify=df[target] if classification else None
    )
    return train, holdout
