"""Inference capture: what an endpoint saw and answered, written in batches to the capture bucket.

The request path only appends a reference to an in-memory buffer (`CaptureWriter.record`, or
`record_batch` for a whole micro-batch: the predicted DataFrame and which rows are whose; no
I/O, no DataFrame building); a background thread turns the buffer into Parquet files:

    s3://<capture_bucket>/captures/<endpoint>/dt=YYYY-MM-DD/hour=HH/<uuid>.parquet

one row per scored input row: the model's input columns plus `_request_id`, `_row`, `_ts`
(UTC), `_model_name`, `_model_version` and `_prediction`. Capture never fails or slows a
request: the buffer is bounded (records beyond it are dropped and counted), S3 errors are
counted and the records kept for the next flush (still within the bound). A string column that
also received other JSON values (MLflow's schema accepts them) is written as strings, so one odd
request never costs the others their capture.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

META_COLUMNS = ("_request_id", "_row", "_ts", "_model_name", "_model_version", "_prediction")


def capture_s3_client(endpoint_url: str | None) -> Any:
    """A boto3 client that gives up fast: a slow store must not pile up records."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"}),
    )


def capture_prefix(endpoint: str) -> str:
    return f"captures/{endpoint}/"


@dataclass(frozen=True)
class _Record:
    """Scored requests (one, or a micro-batch in order), kept as references until the background flush."""

    request_ids: list[str]
    sizes: list[int]  # rows of each request, in the order of `inputs`
    ts: datetime
    model_name: str
    model_version: str
    inputs: pd.DataFrame
    predictions: Any

    @property
    def rows(self) -> int:
        return len(self.inputs)


@dataclass
class CaptureStats:
    records_written: int = 0  # rows, as every captured row is one record
    records_dropped: int = 0
    flush_errors: int = 0
    files_written: int = 0
    buffered_rows: int = 0


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


def _predictions(records: list[_Record]) -> pa.Array:
    """The `_prediction` column: numeric arrays are concatenated as they are (ints as int64, floats
    as float64, the types their Python values always had); anything else goes value by value."""
    parts = [_prediction_column(rec.predictions, rec.rows) for rec in records]
    kinds = {v.dtype.kind for v in parts}
    if len(kinds) == 1 and kinds <= {"i", "f", "b"}:
        dtype = {"i": np.int64, "f": np.float64, "b": np.bool_}[kinds.pop()]
        return pa.array(np.concatenate(parts).astype(dtype, copy=False))
    return _arrow_column(pd.Series([v for part in parts for v in part.tolist()]))


def _constant_per_record(values: list[str], per_record: np.ndarray) -> pa.Array:
    """A string column that only changes between records (model name, version), built by index."""
    uniques = list(dict.fromkeys(values))
    codes = np.repeat(np.array([uniques.index(v) for v in values], dtype="int32"), per_record)
    return pa.array(uniques, type=pa.large_string()).take(codes)


def records_to_table(records: list[_Record]) -> pa.Table:
    """The capture table (inputs plus the metadata columns) for a list of buffered records.

    One pandas concat and Arrow conversion for the inputs; the metadata columns are built in bulk
    from per-record values with numpy repeats and Arrow takes: the flush runs beside the request
    path and shares its GIL, so it must not spend Python work per row.
    """
    inputs = pd.concat([rec.inputs for rec in records], ignore_index=True)
    # A model input named like a metadata column is replaced by it, as it always was.
    inputs = inputs.drop(columns=[c for c in META_COLUMNS if c in inputs.columns])
    table = to_arrow(inputs)
    sizes = np.fromiter((n for rec in records for n in rec.sizes), dtype="int64")
    per_record = np.fromiter((rec.rows for rec in records), dtype="int64")
    ids = pa.array([i for rec in records for i in rec.request_ids], type=pa.large_string())
    stamps = np.fromiter((_micros(rec.ts) for rec in records), dtype="int64", count=len(records))
    columns = {
        "_request_id": ids.take(np.repeat(np.arange(len(sizes), dtype="int64"), sizes)),
        # Row index within its own request: position in the table minus where the request starts.
        "_row": pa.array(np.arange(len(inputs), dtype="int64") - np.repeat(np.cumsum(sizes) - sizes, sizes)),
        "_ts": pa.array(np.repeat(stamps, per_record), type=pa.timestamp("us", tz="UTC")),
        "_model_name": _constant_per_record([rec.model_name for rec in records], per_record),
        "_model_version": _constant_per_record([rec.model_version for rec in records], per_record),
        "_prediction": _predictions(records),
    }
    for name, column in columns.items():
        table = table.append_column(name, column)
    return table


def write_parquet(table: pa.Table, sink: Any) -> None:
    """Parquet with dictionary encoding only where it pays: strings and the per-batch timestamp.
    Trying it on every float column (pyarrow's default) tripled the write time for larger files."""
    dictionary = [f.name for f in table.schema
                  if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or f.name == "_ts"]
    pq.write_table(table, sink, use_dictionary=dictionary)


def records_to_frame(records: list[_Record]) -> pd.DataFrame:
    """The capture table as pandas, as `monitor` reads it back."""
    return records_to_table(records).to_pandas()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(ts: datetime) -> int:
    """Microseconds since the epoch; a naive time is taken as UTC."""
    return ((ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


def _arrow_column(values: pd.Series) -> pa.Array:
    """One column as Arrow; an object column mixing strings with other values is written as strings.

    MLflow's schema lets any JSON value into a string column (1.5, true, 10**22 all score), which
    Parquet cannot store next to strings: such a column keeps its rows as strings (missing values
    stay null) instead of costing the whole flush its records.
    """
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        if values.dtype != object:
            raise
    return pa.array(_as_strings(values), type=pa.large_string(), from_pandas=True)


def _as_strings(values: pd.Series) -> list[Any]:
    return [v if v is None or isinstance(v, str) or (isinstance(v, float) and v != v) else str(v) for v in values]


def to_arrow(table: pd.DataFrame) -> pa.Table:
    """A pandas table as Arrow, keeping every row (see `_arrow_column` for mixed string columns)."""
    try:
        return pa.Table.from_pandas(table, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    fixed = table.copy()
    for name in fixed.select_dtypes(include="object").columns:
        try:
            pa.array(fixed[name], from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            fixed[name] = _as_strings(fixed[name])
    return pa.Table.from_pandas(fixed, preserve_index=False)


class CaptureWriter:
    """Buffers scored requests and writes them to S3 from a background thread."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        endpoint: str,
        *,
        flush_seconds: float = 10.0,
        batch_rows: int = 50_000,
        max_buffer_rows: int = 100_000,
    ) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.endpoint = endpoint
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        self.max_buffer_rows = max_buffer_rows
        self.stats = CaptureStats()
        self._buffer: list[_Record] = []
        self._lock = threading.Lock()  # guards _buffer and stats.buffered_rows
        self._flush_lock = threading.Lock()  # one flush at a time (background or final)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- request path: never raises, never blocks on I/O ------------------------------------

    def record(
        self,
        request_id: str,
        model_name: str,
        model_version: str,
        inputs: pd.DataFrame,
        predictions: Any,
        ts: datetime | None = None,
    ) -> bool:
        """Queue one scored request; False when the buffer is full and it was dropped."""
        return self.record_batch([request_id], [len(inputs)], model_name, model_version, inputs, predictions, ts)

    def record_batch(
        self,
        request_ids: list[str],
        sizes: list[int],
        model_name: str,
        model_version: str,
        inputs: pd.DataFrame,
        predictions: Any,
        ts: datetime | None = None,
    ) -> bool:
        """Queue a micro-batch: `inputs` holds the requests' rows in order, `sizes[i]` of them for
        `request_ids[i]`. False when the buffer is full and the batch was dropped."""
        request_id = request_ids[0] if request_ids else "?"
        try:
            if sum(sizes) != len(inputs) or len(sizes) != len(request_ids):
                raise ValueError(f"sizes {sum(sizes)} != {len(inputs)} input rows or ids != sizes")
            rec = _Record(list(request_ids), list(sizes), ts or datetime.now(UTC), model_name, model_version,
                          inputs, predictions)
            with self._lock:
                if self.stats.buffered_rows + rec.rows > self.max_buffer_rows:
                    self.stats.records_dropped += rec.rows
                    return False
                self._buffer.append(rec)
                self.stats.buffered_rows += rec.rows
                full = self.stats.buffered_rows >= self.batch_rows
            if full:
                self._wake.set()
            return True
        except Exception:  # capture must never fail a request
            log.exception("capture: could not buffer request %s", request_id)
            self.stats.records_dropped += len(inputs) if hasattr(inputs, "__len__") else 1
            return False

    # -- background -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.endpoint}", daemon=True)
        self._thread.start()

    def _warm_up(self) -> None:
        """Pay the one-off costs (pyarrow's Parquet writer, botocore's service model) now, not in the
        middle of serving traffic; and say early when the capture bucket is unreachable."""
        try:
            write_parquet(to_arrow(pd.DataFrame({"x": [0.0], "s": ["a"]})), io.BytesIO())
            self._s3.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            log.warning("capture: s3://%s not reachable yet (%s); records stay buffered until it is", self.bucket, exc)

    def _run(self) -> None:
        self._warm_up()
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()

    def flush(self) -> int:
        """Write everything buffered; returns rows written. On error the records stay buffered."""
        with self._flush_lock:
            with self._lock:
                taken, self._buffer = self._buffer, []
            if not taken:
                return 0
            written = 0
            failed: list[_Record] = []
            by_hour: dict[pd.Timestamp, list[_Record]] = {}
            for rec in taken:  # one file per hour partition
                by_hour.setdefault(_hour(rec.ts), []).append(rec)
            for hour, recs in by_hour.items():
                key = f"{capture_prefix(self.endpoint)}dt={hour:%Y-%m-%d}/hour={hour:%H}/{uuid.uuid4().hex}.parquet"
                try:
                    buf = io.BytesIO()
                    write_parquet(records_to_table(recs), buf)
                except Exception:
                    # A table that cannot be built never will be: drop it rather than retry forever.
                    log.exception("capture: could not build the capture table; dropping %d requests", len(recs))
                    n = sum(r.rows for r in recs)
                    with self._lock:
                        self.stats.buffered_rows -= n
                        self.stats.records_dropped += n
                    continue
                try:
                    self._s3.put_object(Bucket=self.bucket, Key=key, Body=buf.getvalue())
                except Exception as exc:
                    log.warning("capture: writing s3://%s/%s failed (%s); will retry", self.bucket, key, exc)
                    self.stats.flush_errors += 1
                    failed.extend(recs)
                    continue
                written += sum(r.rows for r in recs)
                self.stats.files_written += 1
            with self._lock:
                self.stats.records_written += written
                self.stats.buffered_rows -= written
                # Retry failed records first next time; the bound still holds because they were counted.
                self._buffer = failed + self._buffer
            return written

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background thread and make a last attempt to write what is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.stats.buffered_rows and time.monotonic() < deadline:
            if self.flush() == 0 and self.stats.buffered_rows:
                break  # the store is still down: what is left is lost, and counted
        with self._lock:
            lost = self.stats.buffered_rows
            if lost:
                log.warning("capture: %d records could not be written before shutdown", lost)
                self.stats.records_dropped += lost
                self.stats.buffered_rows = 0
                self._buffer = []


def _hour(ts: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    return (stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")).floor("h")
