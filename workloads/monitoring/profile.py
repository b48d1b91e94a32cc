"""The reference profile: what drift detection needs from the reference data, computed once.

The reference (the champion's training data) is fixed, so everything that depends only on it
is computed once and cached in the capture bucket at `layout.profile_key(...)` (the monitoring
role may write only `monitoring/` there; it can only read the data bucket): per numeric
feature the sorted non-null values and the PSI bin edges, per categorical feature the category
counts, and null rates. Stored as a plain `.npz` (no pickle).

Beside each profile, at `bins_key(...)`, the monitor caches its bins (PSI edges, categories) as a
small JSON document: capture reads it to summarise each flush on the same bins
(workloads/capture/summary.py) without holding the reference's values in a serving pod.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from workloads import layout

PSI_BINS = 10
PREDICTION = "_prediction"


@dataclass
class NumericProfile:
    sorted_values: np.ndarray  # non-null reference values, ascending (float64)
    edges: np.ndarray  # inner PSI bin edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    null_rate: float

    @classmethod
    def build(cls, values: np.ndarray, n_total: int, bins: int = PSI_BINS) -> NumericProfile:
        sorted_values = np.sort(values[~np.isnan(values)])
        n = len(sorted_values)
        if n == 0:
            edges = np.empty(0)
        else:
            # the value at each decile's rank; duplicates collapse (e.g. integer-valued features)
            ranks = np.ceil(np.arange(1, bins) / bins * n).astype(np.int64) - 1
            edges = np.unique(sorted_values[ranks])
        null_rate = 1.0 - n / n_total if n_total else 0.0
        return cls(sorted_values, edges, null_rate)


@dataclass
class CategoricalProfile:
    categories: np.ndarray  # str
    counts: np.ndarray  # int64, same order
    null_rate: float

    @classmethod
    def build(cls, series: pd.Series) -> CategoricalProfile:
        counts = category_counts(series)
        null_rate = float(series.isna().mean()) if len(series) else 0.0
        return cls(counts.index.to_numpy(dtype=str), counts.to_numpy(dtype=np.int64), null_rate)


@dataclass
class ReferenceProfile:
    """What drift detection needs from the reference data, computed once."""

    n_rows: int
    numeric: dict[str, NumericProfile] = field(default_factory=dict)
    categorical: dict[str, CategoricalProfile] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)  # provenance (dataset digest, model version, ...)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @classmethod
    def build(
        cls, reference: pd.DataFrame, columns: Iterable[str] | None = None, *,
        meta: dict[str, str] | None = None, max_workers: int | None = None,
    ) -> ReferenceProfile:
        """Profile `columns` (default: all) of `reference`; numeric dtypes are numeric, the rest categorical."""
        columns = list(reference.columns if columns is None else columns)
        numeric_cols = [c for c in columns if is_numeric(reference[c])]
        categorical_cols = [c for c in columns if c not in numeric_cols]
        n = len(reference)
        with ThreadPoolExecutor(max_workers or os.cpu_count()) as pool:
            num = pool.map(lambda c: NumericProfile.build(floats(reference[c]), n), numeric_cols)
            cat = pool.map(lambda c: CategoricalProfile.build(reference[c]), categorical_cols)
            return cls(n, dict(zip(numeric_cols, num, strict=True)),
                       dict(zip(categorical_cols, cat, strict=True)), dict(meta or {}))

    # Stored as a plain .npz (no pickle): arrays by position, names and metadata as JSON.
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        header: dict[str, Any] = {"n_rows": self.n_rows, "meta": self.meta, "numeric": [], "categorical": []}
        for i, (name, p) in enumerate(self.numeric.items()):
            header["numeric"].append({"name": name, "null_rate": p.null_rate})
            arrays[f"num{i}_sorted"], arrays[f"num{i}_edges"] = p.sorted_values, p.edges
        for i, (name, c) in enumerate(self.categorical.items()):
            header["categorical"].append({"name": name, "null_rate": c.null_rate})
            arrays[f"cat{i}_categories"], arrays[f"cat{i}_counts"] = c.categories.astype(str), c.counts
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, header=np.array(json.dumps(header)), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        return cls.from_file(io.BytesIO(data))

    @classmethod
    def from_file(cls, source: Any) -> ReferenceProfile:
        with np.load(source, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            numeric = {
                h["name"]: NumericProfile(npz[f"num{i}_sorted"], npz[f"num{i}_edges"], h["null_rate"])
                for i, h in enumerate(header["numeric"])
            }
            categorical = {
                h["name"]: CategoricalProfile(npz[f"cat{i}_categories"], npz[f"cat{i}_counts"], h["null_rate"])
                for i, h in enumerate(header["categorical"])
            }
        return cls(header["n_rows"], numeric, categorical, header["meta"])


def cached(s3: Any, bucket: str, key: str, build: Callable[[], ReferenceProfile]) -> ReferenceProfile:
    """The profile stored at `key`, built and stored on first use; its bins document stored beside it."""
    try:
        profile = _download(s3, bucket, key)
    except s3.exceptions.NoSuchKey:
        profile = build()
        s3.put_object(Bucket=bucket, Key=key, Body=profile.to_bytes())
    else:
        try:  # profiles cached before the bins existed get theirs now
            s3.get_object(Bucket=bucket, Key=bins_key(key))["Body"].read()
            return profile
        except s3.exceptions.NoSuchKey:
            pass
    s3.put_object(Bucket=bucket, Key=bins_key(key), Body=bins_document(profile, key))
    return profile


def _download(s3: Any, bucket: str, key: str) -> ReferenceProfile:
    """Through a temporary file: the profile's arrays are in memory once, not also as the object's bytes."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with tempfile.TemporaryFile() as spool:
        for chunk in iter(lambda: body.read(8 * 2**20), b""):
            spool.write(chunk)
        spool.seek(0)
        return ReferenceProfile.from_file(spool)


# --- where profiles live, and their bins for capture ---------------------------------------


def feature_profile_key(dataset_digest: str, features: list[str]) -> str:
    """The features' profile of a dataset (the key reference.py caches it under)."""
    return layout.profile_key(dataset_digest, _hash("\0".join(features)))


def prediction_profile_key(dataset_digest: str, model: str, version: str) -> str:
    """The prediction baseline of one model version on its dataset (as reference.py caches it)."""
    # "last": baselines cached before they took capture's column (the last; column 0 before) are not reused.
    return layout.profile_key(dataset_digest, _hash(f"{PREDICTION}\0{model}\0{version}\0last"))


def bins_key(profile_key: str) -> str:
    """`layout.profile_bins_key` of the profile at `profile_key`: a prefix of their own, so capture
    may read the bins and never the reference's values."""
    digest, name = profile_key.removesuffix(".npz").rsplit("/", 2)[-2:]
    if layout.profile_key(digest, name) != profile_key:
        raise ValueError(f"{profile_key} is not a profile key")
    return layout.profile_bins_key(digest, name)


def bins_document(profile: ReferenceProfile, key: str) -> bytes:
    """The bins capture counts on (capture.summary.Bins.from_documents reads this)."""
    return json.dumps({
        "profile": key,
        "numeric": {name: p.edges.tolist() for name, p in profile.numeric.items()},
        "categorical": {name: c.categories.astype(str).tolist() for name, c in profile.categorical.items()},
    }).encode()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --- column helpers (shared with drift.py) -------------------------------------------------


def category_counts(series: pd.Series) -> pd.Series:
    counts = series.value_counts(dropna=True, sort=False)  # count first: K labels are cheap to convert
    counts = counts[counts > 0]  # a Categorical reports its unused categories too
    counts.index = counts.index.astype(str)
    return counts.groupby(level=0).sum() if counts.index.has_duplicates else counts.sort_index()


def floats(series: pd.Series) -> np.ndarray:
    if series.dtype == np.float64:  # no conversion pass (NaN already marks missing)
        return series.to_numpy()
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
