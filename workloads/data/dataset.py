"""Dataset versions: read and write tables, version them by content digest, store, split.

- `load(source, env)` reads CSV or Parquet from a local path or an `s3://bucket/key` URI;
  `write(df, destination, env)` writes one the same way.
- `store(df, name, env)` writes the data once, content-addressed, at
  `s3://<data_bucket>/datasets/<name>/<digest>/data.parquet` (workloads/layout.py); the
  dataset's schema (workloads/data/schema.py) is stored beside its versions.
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
from pydantic import BaseModel

from workloads import layout
from workloads.data.schema import DatasetSchema, kind_of
from workloads.environment import Environment
from workloads.errors import MlopsError, UsageError

DIGEST_CHARS = 32  # 128 bits of sha256; MLflow's dataset digest column holds 36 characters


class DataError(UsageError, ValueError):
    """A dataset could not be read."""

    kind = "DataError"


# --- read and write -------------------------------------------------------------------------


def _format(source: str) -> Literal["csv", "parquet"]:
    lower = source.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return "csv"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(f"{source}: unknown format; expected a .csv, .csv.gz, .parquet or .pq file")


def _s3_location(uri: str) -> tuple[str, str]:
    url = urlparse(uri)
    return url.netloc, url.path.lstrip("/")


def load(source: str, env: Environment | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file from a local path or an s3:// URI (S3 needs the environment)."""
    fmt = _format(source)
    if source.startswith("s3://"):
        if env is None:
            raise DataError(f"{source}: reading from S3 needs an environment")
        bucket, key = _s3_location(source)
        try:
            body = env.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except env.s3.exceptions.NoSuchKey:
            raise DataError(f"{source}: no such object") from None
        except env.s3.exceptions.ClientError as exc:
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


def write(df: pd.DataFrame, destination: str, env: Environment | None = None) -> str:
    """Write CSV or Parquet (by suffix) to a local path or an s3:// URI; returns where it went."""
    from botocore.exceptions import BotoCoreError, ClientError

    csv = _format(destination) == "csv"
    if not destination.startswith("s3://"):
        path = Path(destination)
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False) if csv else df.to_parquet(path, index=False)
        return str(path)
    if env is None:
        raise DataError(f"{destination}: writing to S3 needs an environment")
    buffer = io.BytesIO()
    df.to_csv(buffer, index=False) if csv else df.to_parquet(buffer, index=False)
    bucket, key = _s3_location(destination)
    try:
        env.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    except (BotoCoreError, ClientError) as exc:  # store down, no such bucket, denied
        raise MlopsError(f"{destination}: could not write: {exc}") from None
    return destination


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


def _exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def store(df: pd.DataFrame, name: str, env: Environment, *, content_digest: str | None = None) -> DatasetVersion:
    """Store `df` once at `s3://<data_bucket>/datasets/<name>/<digest>/data.parquet`."""
    content_digest = content_digest or digest(df)
    bucket, key = env.outputs.data_bucket, layout.dataset_version_key(name, content_digest)
    uploaded = False
    if not _exists(env.s3, bucket, key):
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
        env.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        uploaded = True
    return DatasetVersion(name=name, digest=content_digest, uri=f"s3://{bucket}/{key}", rows=len(df),
                          uploaded=uploaded)


def load_schema(name: str, env: Environment) -> DatasetSchema | None:
    """The schema stored with the dataset's first version, if any."""
    try:
        body = env.s3.get_object(Bucket=env.outputs.data_bucket, Key=layout.dataset_schema_key(name))["Body"]
    except env.s3.exceptions.NoSuchKey:
        return None
    return DatasetSchema.model_validate_json(body.read())


def save_schema(name: str, schema: DatasetSchema, env: Environment) -> str:
    key = layout.dataset_schema_key(name)
    env.s3.put_object(Bucket=env.outputs.data_bucket, Key=key, Body=json.dumps(schema.model_dump(), indent=2).encode())
    return f"s3://{env.outputs.data_bucket}/{key}"


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
