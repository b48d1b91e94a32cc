"""One Arrow schema per endpoint, derived from the model signature, and hostile values normalised.

Inferring the capture table's types from each flush's data gave one endpoint 7 different
Parquet schemas (ints in a double column, an all-null column, numbers in a string column, ...).
With a signature of named columns the schema is fixed: the signature's inputs in order, with
these types, then the metadata columns (table.py). A value that does not fit its column
becomes null and its row's `_coerced` flag is set; a missing optional input is null.

Normalised everywhere (also without a signature): NUL characters are removed and strings cut
at `max_chars` (flagged); infinite numbers become null (flagged); NaN is the missing value
(null, not flagged). A finite number, however large (1e30), is kept: it is what was scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_MAX_CHARS = 1024
UTC_MICROS = pa.timestamp("us", tz="UTC")
# MLflow's scalar column types -> the capture column's Arrow type.
ARROW_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(), "float": pa.float64(), "long": pa.int64(), "integer": pa.int64(),
    "boolean": pa.bool_(), "string": pa.large_string(), "binary": pa.large_binary(), "datetime": UTC_MICROS,
}
_ARROW_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


@dataclass(frozen=True)
class CaptureSchema:
    """The capture columns a model's signature fixes: its inputs, and the prediction's type."""

    inputs: tuple[pa.Field, ...]
    prediction: pa.DataType

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.inputs]

    @classmethod
    def of(cls, input_schema: Any, output_schema: Any = None) -> CaptureSchema | None:
        """None when the signature has no named columns (tensors): such models keep inferred types."""
        if input_schema is None or input_schema.is_tensor_spec() or not input_schema.has_input_names():
            return None
        fields = tuple(pa.field(spec.name, _arrow_type(spec.type)) for spec in input_schema.inputs)
        return cls(fields, _prediction_type(output_schema))


def _arrow_type(mlflow_type: Any) -> pa.DataType:
    # Arrays, objects and maps are kept as their JSON-ish text (capped like any string).
    return ARROW_TYPES.get(getattr(mlflow_type, "name", ""), pa.large_string())


def _prediction_type(output_schema: Any) -> pa.DataType:
    """A string output (class labels) stays a string; everything else is one number per row."""
    if output_schema is not None and not output_schema.is_tensor_spec() and len(output_schema.inputs) == 1:
        if getattr(output_schema.inputs[0].type, "name", "") == "string":
            return pa.large_string()
    return pa.float64()


def conform(values: pd.Series | np.ndarray | None, kind: pa.DataType, rows: int,
            max_chars: int = DEFAULT_MAX_CHARS) -> tuple[pa.Array, np.ndarray]:
    """`values` as a column of type `kind`, normalised; and which rows lost or changed a value."""
    if values is None:
        return pa.nulls(rows, kind), np.zeros(rows, bool)
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    array, misfit = _cast(series.reset_index(drop=True), kind)
    array, changed = normalise(array, max_chars)
    return array, misfit | changed


def normalise(array: pa.Array, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[pa.Array, np.ndarray]:
    """NUL removed and strings cut (text), infinities nulled (floats); which rows changed."""
    changed = np.zeros(len(array), bool)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        nul = _true(pc.match_substring(array, "\x00"))
        if nul.any():
            array = pc.replace_substring(array, "\x00", "")
        long = _true(pc.greater(pc.utf8_length(array), max_chars))
        if long.any():
            array = pc.utf8_slice_codeunits(array, 0, max_chars)
        changed = nul | long
    elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        changed = _true(pc.greater(pc.binary_length(array), max_chars))
        if changed.any():
            array = pc.binary_slice(array, 0, max_chars)
    elif pa.types.is_floating(array.type):
        changed = _true(pc.is_inf(array))
        if changed.any():
            array = pc.if_else(pa.array(changed), pa.scalar(None, array.type), array)
    return array, changed


def _true(mask: Any) -> np.ndarray:
    """A boolean Arrow result as numpy, null counted as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _cast(series: pd.Series, kind: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """The values as `kind`; values that do not fit become null and are flagged (missing ones are not)."""
    missing = series.isna().to_numpy()
    if pa.types.is_large_string(kind):
        return _as_text(series)
    if pa.types.is_floating(kind) or pa.types.is_integer(kind):
        numbers = series if series.dtype.kind in "fiub" else pd.to_numeric(series, errors="coerce")
        floats = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        if pa.types.is_floating(kind):
            return pa.array(floats, type=kind, from_pandas=True), np.isnan(floats) & ~missing
        return _as_integers(numbers, floats, missing)
    if pa.types.is_boolean(kind):
        ok = series.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy()
        flags = [bool(v) if good else None for v, good in zip(series.tolist(), ok, strict=True)]
        return pa.array(flags, type=kind), ~ok & ~missing
    if pa.types.is_timestamp(kind):
        stamps = pd.to_datetime(series, utc=True, errors="coerce")
        return pa.array(stamps, type=kind, from_pandas=True), stamps.isna().to_numpy() & ~missing
    blobs = [v if isinstance(v, (bytes, bytearray)) else None for v in series.tolist()]
    misfit = np.array([v is None for v in blobs], dtype=bool) & ~missing
    return pa.array(blobs, type=kind), misfit


def _as_integers(numbers: pd.Series, floats: np.ndarray, missing: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    if numbers.dtype.kind in "iu" and not missing.any():  # already integers: nothing to check
        return pa.array(numbers.to_numpy(dtype=np.int64)), np.zeros(len(numbers), bool)
    with np.errstate(invalid="ignore"):
        fits = np.isfinite(floats) & (np.abs(floats) < 2.0**63) & (np.floor(floats) == floats)
    values = np.where(fits, floats, 0).astype(np.int64)
    return pa.array(values, mask=~fits), ~fits & ~missing


def _as_text(series: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """Strings as they are; any other value (1.5, True, 10**22, a list) as its text, flagged."""
    try:
        return pa.array(series, type=pa.large_string(), from_pandas=True), np.zeros(len(series), bool)
    except _ARROW_ERRORS:
        pass
    values = series.tolist()
    flags = np.array([not (v is None or isinstance(v, str) or (isinstance(v, float) and v != v)) for v in values],
                     dtype=bool)
    return pa.array([_text(v) for v in values], type=pa.large_string()), flags


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates (JSON "\ud800") cannot be UTF-8: replaced, so one value cannot cost a flush.
    return text.encode("utf-8", "replace").decode("utf-8")
