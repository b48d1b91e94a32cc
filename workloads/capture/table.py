"""Buffered capture records -> one Arrow table (and Parquet bytes), built in bulk.

One row per scored input row: the model's input columns plus `_request_id`, `_row`, `_ts`
(UTC), `_model_name`, `_model_version` (the version that answered), `_prediction`, `_coerced` (a
value of the row did not fit its column and was nulled, cut or turned into text; schema.py), and
`_shadow_version`/`_shadow_prediction` (what a shadowed challenger answered for the row; null
outside shadow mode, so an endpoint's files keep one schema whatever its rollout). With the model's
`CaptureSchema` the columns and types are the signature's, whatever the requests held; without
one (tensor inputs) they are inferred, normalised the same way. The flush runs beside the
request path and shares its GIL, so nothing here spends Python work per row in the common
case: one pandas concat and Arrow conversion per column, metadata from numpy repeats and takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.capture.schema import DEFAULT_MAX_CHARS, UTC_MICROS, CaptureSchema, conform, normalise

META_COLUMNS = ("_request_id", "_row", "_ts", "_model_name", "_model_version", "_prediction", "_coerced",
                "_shadow_version", "_shadow_prediction")
# Small row groups and pages keep a reader's memory bounded: it decodes one page of one column at a
# time, and a column chunk (a page's upper bound) stays under CHUNK_BYTES even at the string cap.
ROW_GROUP_ROWS = 4096
PAGE_ROWS = 1024
CHUNK_BYTES = 16 * 2**20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ARROW_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


@dataclass(frozen=True)
class Record:
    """Scored requests (one, or a micro-batch in order), kept as references until the background flush."""

    request_ids: list[str]
    sizes: list[int]  # rows of each request, in the order of `inputs`
    ts: datetime
    model_name: str
    model_version: str
    inputs: pd.DataFrame
    predictions: Any
    shadow_version: str | None = None  # the challenger that scored the same rows in shadow mode
    shadow_predictions: Any = None  # its answers; None when it failed or nothing was shadowed

    @property
    def rows(self) -> int:
        return len(self.inputs)


def records_to_table(records: list[Record], schema: CaptureSchema | None = None,
                     max_chars: int = DEFAULT_MAX_CHARS) -> pa.Table:
    """The capture table (inputs plus the metadata columns) for a list of buffered records."""
    inputs = pd.concat([rec.inputs for rec in records], ignore_index=True)
    # A model input named like a metadata column is replaced by it, as it always was.
    inputs = inputs.drop(columns=[c for c in META_COLUMNS if c in inputs.columns])
    n = len(inputs)
    columns, coerced = _inputs(inputs, schema, max_chars)
    sizes = np.fromiter((k for rec in records for k in rec.sizes), dtype="int64")
    per_record = np.fromiter((rec.rows for rec in records), dtype="int64")
    ids = pa.array([i for rec in records for i in rec.request_ids], type=pa.large_string())
    ids, cut = normalise(ids.take(np.repeat(np.arange(len(sizes), dtype="int64"), sizes)), max_chars)
    stamps = np.fromiter((_micros(rec.ts) for rec in records), dtype="int64", count=len(records))
    prediction, misfit = _predictions(records, schema.prediction if schema else None, max_chars)
    columns |= {
        "_request_id": ids,
        # Row index within its own request: position in the table minus where the request starts.
        "_row": pa.array(np.arange(n, dtype="int64") - np.repeat(np.cumsum(sizes) - sizes, sizes)),
        "_ts": pa.array(np.repeat(stamps, per_record), type=UTC_MICROS),
        "_model_name": _constant_per_record([rec.model_name for rec in records], per_record),
        "_model_version": _constant_per_record([rec.model_version for rec in records], per_record),
        "_prediction": prediction,
        "_coerced": pa.array(coerced | cut | misfit),
        **_shadow(records, schema.prediction if schema else pa.float64(), max_chars),
    }
    return pa.table(columns)


def _shadow(records: list[Record], kind: pa.DataType, max_chars: int) -> dict[str, pa.Array]:
    """`_shadow_version` and `_shadow_prediction`: per record the challenger's version and answers, or nulls.
    The prediction column takes the champion's prediction type, so the schema never depends on the rollout."""
    per_record = np.fromiter((rec.rows for rec in records), dtype="int64")
    answered = [rec.shadow_version if rec.shadow_predictions is not None else None for rec in records]
    if not any(answered):
        return {"_shadow_version": pa.nulls(int(per_record.sum()), pa.large_string()),
                "_shadow_prediction": pa.nulls(int(per_record.sum()), kind)}
    versions = pa.array(answered, type=pa.large_string()).take(
        np.repeat(np.arange(len(records), dtype="int64"), per_record))
    parts = [_prediction_column(rec.shadow_predictions, rec.rows) if rec.shadow_predictions is not None
             else np.full(rec.rows, None, dtype=object) for rec in records]
    values = pd.Series([v for part in parts for v in part.tolist()], dtype=object)
    prediction, _ = conform(values, kind, len(values), max_chars)
    return {"_shadow_version": versions, "_shadow_prediction": prediction}


def _inputs(inputs: pd.DataFrame, schema: CaptureSchema | None, max_chars: int
            ) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The input columns (the signature's, or as inferred) and which rows had a value changed."""
    coerced = np.zeros(len(inputs), bool)
    columns: dict[str, pa.Array] = {}
    if schema is None:
        table = to_arrow(inputs)
        for name, column in zip(table.column_names, table.columns, strict=True):
            columns[name], changed = normalise(column.combine_chunks(), max_chars)
            coerced |= changed
        return columns, coerced
    for field in schema.inputs:
        values = inputs[field.name] if field.name in inputs.columns else None
        columns[field.name], changed = conform(values, field.type, len(inputs), max_chars)
        coerced |= changed
    return columns, coerced


def write_parquet(table: pa.Table, sink: Any, max_chars: int = DEFAULT_MAX_CHARS) -> None:
    """Parquet with dictionary encoding only where it pays: strings and the per-batch timestamp.
    Trying it on every float column (pyarrow's default) tripled the write time for larger files.
    Row groups hold at most CHUNK_BYTES of the longest strings allowed (4 bytes a character)."""
    dictionary = [f.name for f in table.schema
                  if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or f.name == "_ts"]
    rows = max(1, min(ROW_GROUP_ROWS, CHUNK_BYTES // (4 * max_chars)))
    pq.write_table(table, sink, use_dictionary=dictionary, row_group_size=rows,
                   write_batch_size=min(PAGE_ROWS, rows))


def to_arrow(table: pd.DataFrame) -> pa.Table:
    """A pandas table as Arrow with inferred types, keeping every row.

    MLflow's schema lets any JSON value into a string column (1.5, true, 10**22 all score), which
    Parquet cannot store next to strings: such a column keeps its rows as strings (missing values
    stay null) instead of costing the whole flush its records.
    """
    try:
        return pa.Table.from_pandas(table, preserve_index=False)
    except _ARROW_ERRORS:
        pass
    fixed = table.copy()
    for name in fixed.select_dtypes(include="object").columns:
        try:
            pa.array(fixed[name], from_pandas=True)
        except _ARROW_ERRORS:
            fixed[name] = _as_strings(fixed[name])
    return pa.Table.from_pandas(fixed, preserve_index=False)


def _prediction_column(predictions: Any, n_rows: int) -> np.ndarray:
    """One value per input row, as an array (no per-row Python objects for numeric output)."""
    if isinstance(predictions, (pd.DataFrame, pd.Series)):
        values = predictions.to_numpy()
    else:
        values = np.asarray(predictions, dtype=object if isinstance(predictions, list) else None)
    if values.ndim == 2:
        # One number per row: a class-probability matrix keeps its last column (for a binary
        # classifier, the positive class's probability).
        values = values[:, -1]
    return values[:n_rows]


def _predictions(records: list[Record], kind: pa.DataType | None, max_chars: int) -> tuple[pa.Array, np.ndarray]:
    """The `_prediction` column, of the signature's type when known; else numeric arrays are
    concatenated as they are (ints as int64, floats as float64) and anything else goes value by value."""
    parts = [_prediction_column(rec.predictions, rec.rows) for rec in records]
    kinds = {v.dtype.kind for v in parts}
    numeric = len(kinds) == 1 and kinds <= {"i", "f", "b"}
    if kind is not None:
        values = np.concatenate(parts) if numeric else pd.Series([v for part in parts for v in part.tolist()])
        return conform(values, kind, sum(len(p) for p in parts), max_chars)
    if numeric:
        dtype = {"i": np.int64, "f": np.float64, "b": np.bool_}[kinds.pop()]
        column = pa.array(np.concatenate(parts).astype(dtype, copy=False))
    else:
        column = _arrow_column(pd.Series([v for part in parts for v in part.tolist()]))
    return normalise(column, max_chars)


def _constant_per_record(values: list[str], per_record: np.ndarray) -> pa.Array:
    """A string column that only changes between records (model name, version), built by index."""
    uniques = list(dict.fromkeys(values))
    codes = np.repeat(np.array([uniques.index(v) for v in values], dtype="int32"), per_record)
    return pa.array(uniques, type=pa.large_string()).take(codes)


def _micros(ts: datetime) -> int:
    """Microseconds since the epoch; a naive time is taken as UTC."""
    return ((ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


def _arrow_column(values: pd.Series) -> pa.Array:
    """One column as Arrow; an object column mixing strings with other values is written as strings."""
    try:
        return pa.array(values, from_pandas=True)
    except _ARROW_ERRORS:
        if values.dtype != object:
            raise
    return pa.array(_as_strings(values), type=pa.large_string(), from_pandas=True)


def _as_strings(values: pd.Series) -> list[Any]:
    return [v if v is None or isinstance(v, str) or (isinstance(v, float) and v != v) else str(v) for v in values]
