"""Reading a capture file in bounded memory, whatever it holds.

`pd.read_parquet` of one 48 MB capture file (1M-character strings) cost 4.4 GB. Here a file is
opened through ranged S3 reads (small files in one GET), only the columns asked for are read,
and they come in batches sized from the footer's byte counts so one batch decodes to about
`BATCH_BYTES`. Parquet decodes a page at a time (measured: peak RSS about 4x the page, with
pyarrow's allocator keeping what it freed), so a file whose column chunk (the bound on a page)
decodes to more than `MAX_CHUNK_BYTES` is refused (`TooLarge`) instead of read: capture writes
row groups under 16 MiB (workloads/capture/table.py), so only files from before the caps can
hit it, and the window reports them as skipped.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workloads.capture.summary import arrow_kind

WHOLE_OBJECT_BYTES = 8 * 2**20  # smaller files come in one GET
READ_BYTES = 2**20  # ranged reads of larger ones
BATCH_BYTES = 16 * 2**20
MAX_CHUNK_BYTES = 32 * 2**20


class TooLarge(Exception):
    """A file that cannot be read within the memory bound."""


class S3File(io.RawIOBase):
    """A read-only, seekable view of one S3 object through ranged GETs."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int) -> None:
        self._s3, self._bucket, self._key, self._size, self._pos = s3, bucket, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        end = min(self._pos + len(buffer), self._size)
        if end <= self._pos:
            return 0
        body = self._s3.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end - 1}")
        data = body["Body"].read()
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(frozen=True)
class FileInfo:
    """What a capture file's footer says, without reading its data."""

    rows: int
    ts: tuple[int, int] | None  # `_ts` bounds from the column statistics, microseconds since the epoch
    kinds: dict[str, str]  # column -> numeric, bool, string, null or other


def open_file(s3: Any, bucket: str, key: str, size: int) -> pq.ParquetFile:
    if size <= WHOLE_OBJECT_BYTES:
        source: Any = io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    else:
        source = io.BufferedReader(S3File(s3, bucket, key, size), READ_BYTES)
    # buffer_size: column chunks are read and decoded piece by piece, not whole.
    return pq.ParquetFile(source, buffer_size=READ_BYTES, pre_buffer=False)


def file_info(parquet: pq.ParquetFile) -> FileInfo:
    meta = parquet.metadata
    schema = parquet.schema_arrow
    return FileInfo(meta.num_rows, _ts_bounds(parquet), {f.name: arrow_kind(f.type) for f in schema})


def check(parquet: pq.ParquetFile, columns: list[str] | None = None) -> float:
    """Decoded bytes per row of `columns` (default: all); TooLarge when a column chunk exceeds the bound."""
    names = parquet.schema_arrow.names if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
    meta = parquet.metadata
    widest = 1.0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunks = [_chunk_bytes(group, c) for c in names]
        if chunks and max(chunks) > MAX_CHUNK_BYTES:
            raise TooLarge(f"a column chunk decodes to {max(chunks) / 2**20:.0f} MiB "
                           f"(limit {MAX_CHUNK_BYTES / 2**20:.0f} MiB)")
        widest = max(widest, sum(chunks) / max(group.num_rows, 1))
    return widest


def batches(parquet: pq.ParquetFile, columns: list[str]) -> Iterator[pa.Table]:
    """The file's `columns` (those it has) in batches of about BATCH_BYTES decoded."""
    present = [c for c in columns if c in parquet.schema_arrow.names]
    size = max(1, int(BATCH_BYTES / check(parquet, present)))
    for batch in parquet.iter_batches(batch_size=size, columns=present):
        yield pa.Table.from_batches([batch])


def _chunk_bytes(group: Any, column: str) -> int:
    """Decoded bytes of one column's chunk in a row group (nested columns: every leaf)."""
    total = 0
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema.split(".", 1)[0] == column:
            total += chunk.total_uncompressed_size
    return total


def _ts_bounds(parquet: pq.ParquetFile) -> tuple[int, int] | None:
    """`_ts` min and max over the row groups' statistics; None when a group has none."""
    meta = parquet.metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "_ts" not in names:
        return None
    index = names.index("_ts")
    lows, highs = [], []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        lows.append(_micros(stats.min, parquet))
        highs.append(_micros(stats.max, parquet))
    return (min(lows), max(highs)) if lows else None


def _micros(value: Any, parquet: pq.ParquetFile) -> int:
    """A `_ts` statistic as microseconds since the epoch, whatever unit the writer used."""
    kind = parquet.schema_arrow.field("_ts").type
    if isinstance(value, int):  # raw physical value
        unit = getattr(kind, "unit", "us")
        return value * {"s": 1_000_000, "ms": 1000, "us": 1, "ns": 1}[unit] // (1000 if unit == "ns" else 1)
    return int(pa.scalar(value, type=pa.timestamp("us", tz="UTC")).cast(pa.int64()).as_py())
