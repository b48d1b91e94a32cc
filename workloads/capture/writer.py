"""Inference capture: what an endpoint saw and answered, written in batches to the capture bucket.

The request path only appends a reference to an in-memory buffer (`CaptureWriter.record`, or
`record_batch` for a whole micro-batch: the predicted DataFrame and which rows are whose; no
I/O, no DataFrame building); a background thread turns the buffer into Parquet files
(workloads/capture/table.py), one per hour partition and model version, at `layout.capture_key`:

    s3://<capture_bucket>/captures/<endpoint>/dt=YYYY-MM-DD/hour=HH/<uuid>.parquet
    s3://<capture_bucket>/captures/<endpoint>/dt=YYYY-MM-DD/hour=HH/<uuid>.summary

The columns and types are the served version's signature (`on_swap` learns it; schema.py),
strings capped at `max_string_chars`. Beside each file goes its summary (summary.py: counts on
the reference profile's bins and a sample) once the monitor has cached those bins
(profiles.py); until then files go without one and the monitor reads them exactly.

Capture never fails or slows a request: the buffer is bounded (records beyond it are dropped
and counted), S3 errors are counted and the records kept for the next flush (still within the
bound).
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from workloads.capture.profiles import BinsSource
from workloads.capture.schema import DEFAULT_MAX_CHARS, CaptureSchema
from workloads.capture.summary import Summary, summary_key
from workloads.capture.table import Record, records_to_table, to_arrow, write_parquet
from workloads.layout import capture_key

if TYPE_CHECKING:
    from workloads.environment import Environment

log = logging.getLogger(__name__)

# A slow store must not pile up records: one attempt, short timeouts, then the next flush retries.
S3_TIMEOUTS = {"connect_timeout": 2, "read_timeout": 5, "max_attempts": 1}


@dataclass
class CaptureStats:
    records_written: int = 0  # rows, as every captured row is one record
    records_dropped: int = 0
    flush_errors: int = 0
    buffered_rows: int = 0
    summaries_written: int = 0
    summary_errors: int = 0  # the file was written, its summary not: the monitor reads that file exactly


class CaptureWriter:
    """Buffers scored requests and writes them to S3 from a background thread."""

    def __init__(self, s3: Any, bucket: str, endpoint: str, *, flush_seconds: float = 10.0,
                 batch_rows: int = 50_000, max_buffer_rows: int = 100_000,
                 max_string_chars: int = DEFAULT_MAX_CHARS, bins: BinsSource | None = None) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.endpoint = endpoint
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        self.max_buffer_rows = max_buffer_rows
        self.max_string_chars = max_string_chars
        self._bins = bins
        self._schemas: dict[tuple[str, str], CaptureSchema | None] = {}  # (model, version) -> its columns
        self.stats = CaptureStats()
        self._buffer: list[Record] = []
        self._lock = threading.Lock()  # guards _buffer and stats
        self._flush_lock = threading.Lock()  # one flush at a time (background or final)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_environment(cls, env: Environment, endpoint: str, **options: Any) -> CaptureWriter:
        """A writer to the environment's capture bucket, with an S3 client that gives up fast."""
        s3 = env.s3_client(**S3_TIMEOUTS)
        bins = BinsSource(s3, env.outputs.capture_bucket, env.mlflow_client)
        return cls(s3, env.outputs.capture_bucket, endpoint, bins=bins, **options)

    def on_swap(self, old: Any, new: Any) -> None:
        """A model version was loaded (serving's ModelHolder): its signature fixes its capture columns."""
        metadata = new.pyfunc.metadata
        schema = CaptureSchema.of(metadata.get_input_schema(), metadata.get_output_schema())
        with self._lock:
            self._schemas[(new.name, new.version)] = schema
            while len(self._schemas) > 4:  # records of older versions have long been flushed
                self._schemas.pop(next(iter(self._schemas)))

    # -- request path: never raises, never blocks on I/O ------------------------------------

    def record(self, request_id: str, model_name: str, model_version: str, inputs: pd.DataFrame,
               predictions: Any, ts: datetime | None = None) -> bool:
        """Queue one scored request; False when the buffer is full and it was dropped."""
        return self.record_batch([request_id], [len(inputs)], model_name, model_version, inputs, predictions, ts)

    def record_batch(self, request_ids: list[str], sizes: list[int], model_name: str, model_version: str,
                     inputs: pd.DataFrame, predictions: Any, ts: datetime | None = None,
                     shadow: tuple[str, Any] | None = None) -> bool:
        """Queue a micro-batch: `inputs` holds the requests' rows in order, `sizes[i]` of them for
        `request_ids[i]`; `shadow` is (challenger version, its answers or None) in shadow mode.
        False when the buffer is full and the batch was dropped."""
        try:
            if sum(sizes) != len(inputs) or len(sizes) != len(request_ids):
                raise ValueError(f"sizes {sum(sizes)} != {len(inputs)} input rows or ids != sizes")
            rec = Record(list(request_ids), list(sizes), ts or datetime.now(UTC), model_name, model_version,
                         inputs, predictions, *(shadow or (None, None)))
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
            log.exception("capture: could not buffer request %s", request_ids[0] if request_ids else "?")
            with self._lock:
                self.stats.records_dropped += len(inputs) if hasattr(inputs, "__len__") else 1
            return False

    # -- background -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.endpoint}", daemon=True)
        self._thread.start()

    def _warm_up(self) -> None:
        """Pay the one-off costs (pyarrow's Parquet writer, botocore's service model) now, not in the
        middle of serving traffic; and say early when the capture bucket is unreachable.

        No S3 request: HeadBucket is authorized as s3:ListBucket, which the serving role does not
        have. Presigning a PutObject resolves the endpoint and signs offline; a TCP connect to that
        endpoint says whether it is reachable."""
        import socket
        from urllib.parse import urlsplit

        from workloads.layout import capture_prefix

        try:
            write_parquet(to_arrow(pd.DataFrame({"x": [0.0], "s": ["a"]})), io.BytesIO())
            url = urlsplit(self._s3.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": capture_prefix(self.endpoint)}, ExpiresIn=60))
            port = url.port or (443 if url.scheme == "https" else 80)
            socket.create_connection((url.hostname or "", port), timeout=2).close()
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
            written, failed = 0, []
            for (hour, *_), recs in _by_file(taken).items():
                rows = self._write_file(hour, recs)
                if rows is None:
                    failed.extend(recs)
                else:
                    written += rows
            with self._lock:
                self.stats.records_written += written
                self.stats.buffered_rows -= written
                # Retry failed records first next time; the bound still holds because they were counted.
                self._buffer = failed + self._buffer
            return written

    def _write_file(self, hour: pd.Timestamp, recs: list[Record]) -> int | None:
        """One hour's records of one version as one Parquet object (and its summary): rows written,
        or None when the store failed."""
        key = capture_key(self.endpoint, hour, uuid.uuid4().hex)
        rows = sum(r.rows for r in recs)
        schema = self._schemas.get((recs[0].model_name, recs[0].model_version))
        try:
            buf = io.BytesIO()
            table = records_to_table(recs, schema, self.max_string_chars)
            write_parquet(table, buf, self.max_string_chars)
        except Exception:
            # A table that cannot be built never will be: drop it rather than retry forever.
            log.exception("capture: could not build the capture table; dropping %d requests", len(recs))
            self._lose(rows)
            return 0
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=buf.getvalue())
        except Exception as exc:
            log.warning("capture: writing s3://%s/%s failed (%s); will retry", self.bucket, key, exc)
            with self._lock:
                self.stats.flush_errors += 1
            return None
        self._write_summary(key, table, recs[0], schema)
        return rows

    def _write_summary(self, key: str, table: Any, rec: Record, schema: CaptureSchema | None) -> None:
        """The file's summary, when the monitor has cached its version's bins; never fails the flush."""
        if self._bins is None or schema is None:
            return
        try:
            bins = self._bins.get(rec.model_name, rec.model_version, schema.names)
            if bins is None:
                return
            body = Summary.of_table(table, bins).to_bytes()
            self._s3.put_object(Bucket=self.bucket, Key=summary_key(key), Body=body)
        except Exception as exc:
            log.warning("capture: no summary for s3://%s/%s (%s); the monitor will read the file", self.bucket,
                        key, exc)
            with self._lock:
                self.stats.summary_errors += 1
            return
        with self._lock:
            self.stats.summaries_written += 1

    def _lose(self, rows: int) -> None:
        with self._lock:
            self.stats.buffered_rows -= rows
            self.stats.records_dropped += rows

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
            lost, self._buffer = self.stats.buffered_rows, []
        if lost:
            log.warning("capture: %d records could not be written before shutdown", lost)
            self._lose(lost)


def _by_file(records: list[Record]) -> dict[tuple[pd.Timestamp, str, str], list[Record]]:
    """Records by the UTC hour they were scored in and the version that scored them: one file each."""
    files: dict[tuple[pd.Timestamp, str, str], list[Record]] = {}
    for rec in records:
        stamp = pd.Timestamp(rec.ts)
        hour = (stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")).floor("h")
        files.setdefault((hour, rec.model_name, rec.model_version), []).append(rec)
    return files
