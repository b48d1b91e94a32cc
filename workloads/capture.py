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
from datetime import UTC, datetime
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


def _prediction_column(predictions: Any, n_rows: int) -> list[Any]:
    """One number per input row."""
    if isinstance(predictions, pd.DataFrame):
        values = predictions.to_numpy()
    elif isinstance(predictions, pd.Series):
        values = predictions.to_numpy()
    else:
        values = np.asarray(predictions, dtype=object if isinstance(predictions, list) else None)
    if values.ndim == 2:
        # One number per row: a class-probability matrix keeps its last column (for a binary
        # classifier, the positive class's probability).
        values = values[:, -1]
    return values.tolist()[:n_rows]


def records_to_frame(records: list[_Record]) -> pd.DataFrame:
    """The capture table for a list of scored requests (inputs plus the metadata columns).

    Built column by column over all records at once: the flush runs beside the request path
    and shares its GIL, so per-record DataFrame work would slow serving down.
    """
    table = pd.concat([rec.inputs for rec in records], ignore_index=True)
    sizes = np.fromiter((n for rec in records for n in rec.sizes), dtype="int64")
    per_record = np.fromiter((rec.rows for rec in records), dtype="int64")
    ids = np.fromiter((i for rec in records for i in rec.request_ids), dtype=object, count=len(sizes))
    table["_request_id"] = np.repeat(ids, sizes)
    # Row index within its own request: position in the table minus where the request starts.
    table["_row"] = np.arange(len(table), dtype="int64") - np.repeat(np.cumsum(sizes) - sizes, sizes)
    stamps = pd.DatetimeIndex([pd.Timestamp(rec.ts) for rec in records])
    stamps = stamps.tz_convert("UTC") if stamps.tz is not None else stamps.tz_localize("UTC")
    table["_ts"] = stamps.repeat(per_record).astype("datetime64[us, UTC]")
    table["_model_name"] = np.repeat(np.array([rec.model_name for rec in records], dtype=object), per_record)
    table["_model_version"] = np.repeat(np.array([rec.model_version for rec in records], dtype=object), per_record)
    table["_prediction"] = [v for rec in records for v in _prediction_column(rec.predictions, rec.rows)]
    return table


def to_arrow(table: pd.DataFrame) -> pa.Table:
    """The capture table as Arrow, keeping every row.

    MLflow's schema lets any JSON value into a string column (1.5, true, 10**22 all score), so an
    object column can mix strings with other values, which Parquet cannot store. Such a column is
    written as strings (missing values stay null) instead of costing the whole flush its records.
    """
    try:
        return pa.Table.from_pandas(table, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    fixed = table.copy()
    for name in fixed.select_dtypes(include="object").columns:
        try:
            pa.array(fixed[name], from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            fixed[name] = [v if v is None or isinstance(v, str) or (isinstance(v, float) and v != v) else str(v)
                           for v in fixed[name]]
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
        batch_rows: int = 5000,
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
            pq.write_table(to_arrow(pd.DataFrame({"x": [0.0], "s": ["a"]})), io.BytesIO())
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
                    pq.write_table(to_arrow(records_to_frame(recs)), buf)
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
