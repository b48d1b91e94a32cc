"""How big a request may get once decoded: rows and bytes, checked before any DataFrame exists.

A few hundred kilobytes can decode to gigabytes: a Parquet body of one repeated value
(dictionary + run-length encoding) to 10M rows, JSON records whose keys never repeat to a
dense frame of rows x every key, a `dataframe_split` index to as many rows as it lists. So each
format is measured from what is cheap to read first, and refused with a 413 that names the
limit before pandas builds anything:

- JSON: an upper estimate of the decoded objects from the body's structure (brackets, braces,
  commas) before `json.loads`; then rows (every list pandas would turn into rows, the split
  `index` included) and rows x columns of the decoded payload;
- CSV: lines and the header's fields, counted on the bytes;
- Parquet: the footer's row count and value counts, then the Arrow size with dictionaries still
  encoded (so a repeated 1 MB string counts a million times without being copied once).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from workloads.serving.protocol import error

if TYPE_CHECKING:
    from workloads.serving.admission import Ticket

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CELL_BYTES = 8  # a float64 or an object pointer per cell, the least a DataFrame cell costs
# json.loads costs per container (list/dict object) and per value (pointer + a small object).
CONTAINER_BYTES, VALUE_BYTES = 64, 32
_TEXT = frozenset({"STRING", "NONE", "JSON", "BSON", "ENUM"})  # byte-array columns Arrow can keep as dictionaries


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass(frozen=True)
class RequestLimits:
    """Rows per request and decoded bytes per request (ServeSettings.max_request_rows, max_decoded_bytes)."""

    max_rows: int
    max_decoded_bytes: int
    ticket: Ticket | None = None  # a request's admission: every accepted estimate is held on it
    json_metered: bool = False  # the JSON structure was estimated chunk by chunk as the body arrived

    def bound(self, ticket: Ticket) -> RequestLimits:
        return replace(self, ticket=ticket)

    def metered(self) -> RequestLimits:
        return replace(self, json_metered=True)

    # -- the two refusals ----------------------------------------------------------------------

    def rows(self, what: str, rows: int) -> None:
        if rows > self.max_rows:
            raise error(413, "RESOURCE_EXHAUSTED", f"{what} has {rows} rows; the limit is {self.max_rows} "
                        "rows per request (--max-request-rows): split the request")

    def decoded(self, what: str, size: float) -> None:
        if size > self.max_decoded_bytes:
            raise error(413, "RESOURCE_EXHAUSTED", f"{what} decodes to about {_size(size)}; the limit is "
                        f"{_size(self.max_decoded_bytes)} per request (--max-decoded-bytes): split the request")
        if self.ticket is not None:
            self.ticket.reserve_decoded(size)

    # -- JSON ----------------------------------------------------------------------------------

    def json_payload(self, body: bytes) -> Any:
        """The decoded body within the limits; None when it is not JSON (the parser then says why)."""
        if not self.json_metered:
            JsonMeter(self).feed(body)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # invalid JSON or UTF-8, or nested too deep
            return None
        self.check_json(payload)
        return payload

    def check_json(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        for key in FORMATS:
            if key in payload:
                rows, columns = _json_shape(key, payload[key], self)
                self.decoded(key, rows * columns * CELL_BYTES)

    # -- CSV -----------------------------------------------------------------------------------

    def check_csv(self, body: bytes) -> None:
        # Quoted line breaks and commas count too: an overestimate, never an under one.
        lines = max(body.count(b"\n"), body.count(b"\r")) + (0 if body.endswith((b"\n", b"\r")) else 1)
        self.rows("the CSV body", lines - 1)
        header = body[:body.find(b"\n")] if b"\n" in body else body
        self.decoded("the CSV body", lines * (header.count(b",") + 1) * CELL_BYTES)

    # -- Parquet -------------------------------------------------------------------------------

    def check_parquet(self, body: bytes) -> None:
        """Footer first (rows, values), then the Arrow size with dictionaries kept encoded."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(pa.BufferReader(body))
        except Exception:  # not Parquet: MLflow's parser gives the message
            return
        meta = file.metadata
        self.rows("the Parquet body", meta.num_rows)
        chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
        self.decoded("the Parquet body", sum(c.num_values for c in chunks) * CELL_BYTES)
        self.decoded("the Parquet body", sum(c.total_uncompressed_size for c in chunks))
        columns = [meta.schema.column(c) for c in range(meta.num_columns)]
        strings = [c.path for c in columns if c.physical_type == "BYTE_ARRAY" and c.logical_type.type in _TEXT]
        try:
            table = pq.read_table(pa.BufferReader(body), read_dictionary=strings)
        except Exception as exc:  # fail closed: what cannot be measured is not built
            raise error(400, "BAD_REQUEST", f"Failed to read the Parquet body: {exc}") from None
        self.decoded("the Parquet body", sum(arrow_bytes(column) for column in table.columns))


class JsonMeter:
    """The JSON structure estimate, fed chunk by chunk as a body arrives: no pass over a whole large
    body on the event loop, and a body that is too much is refused before the rest of it is read."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits, self.containers, self.values = limits, 0, 1

    def feed(self, chunk: bytes) -> None:
        self.containers += chunk.count(b"[") + chunk.count(b"{")
        self.values += chunk.count(b",")
        self.limits.decoded("the JSON body", self.containers * CONTAINER_BYTES + self.values * VALUE_BYTES)


def arrow_bytes(array: Any) -> int:
    """What an Arrow array takes once every dictionary is decoded (without decoding any)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        return sum(arrow_bytes(chunk) for chunk in array.chunks)
    if isinstance(array, pa.DictionaryArray):
        values = array.dictionary
        if pa.types.is_binary(values.type) or pa.types.is_string(values.type) or \
                pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
            lengths = pc.binary_length(values).take(array.indices.fill_null(0))
            return int(pc.sum(lengths).as_py() or 0) + len(array) * CELL_BYTES
        return len(array) * max(arrow_bytes(values) // max(len(values), 1), CELL_BYTES)
    if isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
        return len(array) * CELL_BYTES + arrow_bytes(array.flatten())
    if isinstance(array, pa.StructArray):
        return sum(arrow_bytes(array.field(i)) for i in range(array.type.num_fields))
    return max(array.nbytes, len(array) * CELL_BYTES)


def _json_shape(key: str, value: Any, limits: RequestLimits) -> tuple[int, int]:
    """(rows, columns) pandas would build from one format key's value; rows checked on the way."""
    if key == "dataframe_split":
        if not isinstance(value, dict):
            return 0, 0
        data, index, columns = value.get("data"), value.get("index"), value.get("columns")
        rows = len(data) if isinstance(data, list) else 0
        limits.rows("dataframe_split.data", rows)
        if isinstance(index, list):
            limits.rows("dataframe_split.index", len(index))
            rows = max(rows, len(index))
        width = len(columns) if isinstance(columns, list) else 0
        return rows, max(width, _widest(data if isinstance(data, list) else []))
    if isinstance(value, dict):  # inputs/instances as columns: {"a": [..], "b": [..]}
        rows = max((len(v) for v in value.values() if isinstance(v, list)), default=1)
        limits.rows(key, rows)
        return rows, len(value)
    if not isinstance(value, list):
        return 1, 1
    limits.rows(key, len(value))
    return len(value), _widest(value)


def _widest(rows: Iterable[Any]) -> int:
    """Columns a list of rows becomes: distinct keys of dict rows (pandas unions them), else the widest row."""
    keys: set[Any] = set()
    width = 1
    for row in rows:
        if isinstance(row, dict):
            keys.update(row)
        elif isinstance(row, list):
            width = max(width, len(row))
    return max(width, len(keys))
