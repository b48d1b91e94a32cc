"""The per-flush capture summary: what drift monitoring needs from a capture file, in kilobytes.

Written next to each capture file (`<uuid>.summary` beside `<uuid>.parquet`) when capture knows
the reference profile's bins (`Bins`: the PSI edges of every numeric feature and of the
prediction, the reference categories of every categorical feature). Per column: null count,
counts on those bins or categories (summed over files they give exactly the counts, hence the
PSI and chi-square, of the full data), and for categories the unseen values (the first
`MAX_UNSEEN` by count; the rest in one `other` count). Plus a uniform sample of rows: each row
draws a key u ~ U(0, 1) and rows with u < `rate` are kept, sorted by u, so a reader wanting a
Bernoulli(t) sample for any t <= rate reads only a prefix (monitoring/summaries.py).

Layout: MAGIC | header length (8 bytes, little-endian) | header (JSON) | sample rows, each
`[u, value per sample column]` as float64 little-endian (categories as codes into the
reference categories, -1 unseen; NaN is null).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAGIC = b"MLOPS-SUMMARY1\n"
PREFIX = len(MAGIC) + 8  # magic and header length
SAMPLE_RATE = 0.05  # share of rows kept in the sample (before any reader thins it)
INDEX_EVERY = 64  # the header holds every 64th sample key: a reader knows how far to read
MAX_UNSEEN = 100  # unseen categories counted one by one, per column
MAX_CATEGORY_CHARS = 1024  # an unseen value is named by its first 1,024 characters (old captures hold longer)


@dataclass(frozen=True)
class Bins:
    """What capture counts on: the reference profiles' bins, and the profile keys they came from."""

    numeric: dict[str, np.ndarray]  # column -> inner PSI edges (right-closed bins, open-ended)
    categorical: dict[str, list[str]]  # column -> reference categories
    features_key: str
    prediction_key: str | None = None

    @property
    def columns(self) -> list[str]:
        """Sample columns: numeric (with the prediction), then categorical."""
        return [*self.numeric, *self.categorical]

    @classmethod
    def from_documents(cls, features: dict[str, Any], prediction: dict[str, Any] | None) -> Bins:
        """From the bins documents the monitor caches beside its profiles (monitoring/profile.py)."""
        numeric = {k: np.asarray(v, dtype=np.float64) for k, v in features["numeric"].items()}
        if prediction is not None:
            numeric |= {k: np.asarray(v, dtype=np.float64) for k, v in prediction["numeric"].items()}
        return cls(numeric, {k: list(v) for k, v in features["categorical"].items()}, features["profile"],
                   prediction["profile"] if prediction else None)


@dataclass
class Categories:
    counts: np.ndarray  # int64, on the reference categories
    unseen: dict[str, int] = field(default_factory=dict)
    other: int = 0  # unseen values beyond MAX_UNSEEN distinct ones
    nulls: int = 0

    def add(self, more: Categories) -> None:
        self.counts = self.counts + more.counts
        self.nulls += more.nulls
        self.other += more.other
        for value, n in more.unseen.items():
            self.unseen[value] = self.unseen.get(value, 0) + n
        if len(self.unseen) > MAX_UNSEEN:
            ranked = sorted(self.unseen.items(), key=lambda kv: (-kv[1], kv[0]))
            self.unseen = dict(ranked[:MAX_UNSEEN])
            self.other += sum(n for _, n in ranked[MAX_UNSEEN:])


@dataclass
class Summary:
    """Counts of one capture file (or of several, added up) and its sample rows."""

    rows: int
    ts: tuple[int, int] | None  # first and last `_ts`, microseconds since the epoch
    kinds: dict[str, str]  # column -> numeric, bool, string, null or other (the integrity check)
    features_key: str | None
    prediction_key: str | None
    nulls: dict[str, int]  # numeric column -> nulls
    bins: dict[str, np.ndarray]  # numeric column -> int64 counts (len(edges) + 1)
    categories: dict[str, Categories]
    columns: list[str]  # sample columns after the key
    rate: float
    sample: np.ndarray  # (m, 1 + len(columns)) float64, ascending key
    sources: list[str] = field(default_factory=list)  # capture files merged into it (the monitor's roll-ups)

    @classmethod
    def of_table(cls, table: pa.Table, bins: Bins, rate: float = SAMPLE_RATE,
                 rng: np.random.Generator | None = None) -> Summary:
        """Summarise a capture table (its columns must include the bins' columns)."""
        rng = rng or np.random.default_rng()
        n = table.num_rows
        keys = rng.random(n)
        picked = np.flatnonzero(keys < rate)
        picked = picked[np.argsort(keys[picked], kind="stable")]
        sample = np.empty((len(picked), 1 + len(bins.columns)))
        sample[:, 0] = keys[picked]
        nulls, counts, categories = {}, {}, {}
        for i, name in enumerate(bins.columns, start=1):
            column = table.column(name)
            if name in bins.numeric:
                values = numeric_values(column)
                nulls[name], counts[name] = bin_counts(values, bins.numeric[name])
                sample[:, i] = values[picked]
            else:
                categories[name] = category_counts(column, bins.categorical[name])
                sample[:, i] = category_codes(column, bins.categorical[name])[picked]
        return cls(n, ts_range(table), column_kinds(table.schema), bins.features_key, bins.prediction_key,
                   nulls, counts, categories, list(bins.columns), rate, sample)

    def to_bytes(self) -> bytes:
        header = json.dumps({
            "rows": self.rows, "ts": self.ts, "kinds": self.kinds, "features_key": self.features_key,
            "prediction_key": self.prediction_key, "nulls": self.nulls,
            "bins": {k: v.tolist() for k, v in self.bins.items()},
            "categories": {k: {"counts": c.counts.tolist(), "unseen": c.unseen, "other": c.other, "nulls": c.nulls}
                           for k, c in self.categories.items()},
            "columns": self.columns, "rate": self.rate, "sample_rows": len(self.sample),
            "index": self.sample[::INDEX_EVERY, 0].tolist() if len(self.sample) else [], "sources": self.sources,
        }).encode()
        return MAGIC + struct.pack("<Q", len(header)) + header + self.sample.astype("<f8").tobytes()

    @classmethod
    def from_header(cls, header: dict[str, Any], sample: np.ndarray | None = None) -> Summary:
        """A summary from its parsed header (counts) and whichever sample rows were read."""
        width = 1 + len(header["columns"])
        return cls(
            header["rows"], tuple(header["ts"]) if header["ts"] else None, header["kinds"],
            header["features_key"], header["prediction_key"], header["nulls"],
            {k: np.asarray(v, dtype=np.int64) for k, v in header["bins"].items()},
            {k: Categories(np.asarray(c["counts"], dtype=np.int64), c["unseen"], c["other"], c["nulls"])
             for k, c in header["categories"].items()},
            header["columns"], header["rate"], sample if sample is not None else np.empty((0, width)),
            header.get("sources", []),
        )

    def counts_only(self) -> Summary:
        """A copy of the counts (to add others to), without the sample."""
        return Summary(self.rows, self.ts, dict(self.kinds), self.features_key, self.prediction_key,
                       dict(self.nulls), {k: v.copy() for k, v in self.bins.items()},
                       {k: Categories(c.counts.copy(), dict(c.unseen), c.other, c.nulls)
                        for k, c in self.categories.items()},
                       list(self.columns), self.rate, self.sample[:0])

    def add_counts(self, more: Summary) -> None:
        """Add another summary's counts (same bins) to these; samples are merged by the reader."""
        self.rows += more.rows
        if more.ts:
            self.ts = (min(self.ts[0], more.ts[0]), max(self.ts[1], more.ts[1])) if self.ts else more.ts
        for name, kind in more.kinds.items():
            self.kinds[name] = kind if self.kinds.get(name, "null") == "null" else self.kinds[name]
        for name, n in more.nulls.items():
            self.nulls[name] = self.nulls.get(name, 0) + n
            self.bins[name] = self.bins[name] + more.bins[name] if name in self.bins else more.bins[name].copy()
        for name, c in more.categories.items():
            if name in self.categories:
                self.categories[name].add(c)
            else:
                self.categories[name] = Categories(c.counts.copy(), dict(c.unseen), c.other, c.nulls)


def parse_prefix(data: bytes) -> tuple[dict[str, Any], int] | None:
    """(header, where the sample starts) from a summary's first bytes; None if they end inside the header."""
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError("not a capture summary")
    (length,) = struct.unpack("<Q", data[len(MAGIC):PREFIX])
    if len(data) < PREFIX + length:
        return None
    return json.loads(data[PREFIX:PREFIX + length]), PREFIX + length


def header_length(data: bytes) -> int:
    return PREFIX + struct.unpack("<Q", data[len(MAGIC):PREFIX])[0]


def summary_key(capture_key: str) -> str:
    """`<...>/<uuid>.summary` beside `<...>/<uuid>.parquet`."""
    return capture_key.removesuffix(".parquet") + ".summary"


# --- one column ------------------------------------------------------------------------------


def numeric_values(column: Any) -> np.ndarray:
    """float64 with NaN for null (the drift code's definition of missing)."""
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> tuple[int, np.ndarray]:
    """(nulls, counts on the bins (-inf, e0], (e0, e1], ..., (e_last, inf)), as drift.py bins sorted data."""
    present = values[~np.isnan(values)]
    if len(edges) > 32:
        counts = np.bincount(np.searchsorted(edges, present, "left"), minlength=len(edges) + 1)
    else:  # a few edges (deciles): one vectorised comparison each beats a binary search per value
        at_most = [np.count_nonzero(present <= e) for e in edges]
        counts = np.diff(np.array([0, *at_most, len(present)]))
    return len(values) - len(present), counts.astype(np.int64)


def category_counts(column: Any, categories: list[str]) -> Categories:
    """Counts on the reference categories (values compared as text, as pandas' astype(str) does).

    Vectorised on the distinct values: only unseen ones become Python strings, cut to
    MAX_CATEGORY_CHARS (captures from before the caps hold megabyte strings)."""
    counted = pc.value_counts(column)
    values, counts = counted.field("values"), counted.field("counts").to_numpy(zero_copy_only=False)
    present = np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    where = _category_index(values, categories)
    known = present & (where >= 0)
    result = Categories(np.bincount(where[known], weights=counts[known], minlength=len(categories)).astype(np.int64),
                        nulls=column.null_count)
    fresh = np.flatnonzero(present & (where < 0))
    if len(fresh):
        names = pc.utf8_slice_codeunits(_as_text(values.take(pa.array(fresh))), 0, MAX_CATEGORY_CHARS).to_pylist()
        unseen: dict[str, int] = {}
        for name, n in zip(names, counts[fresh].tolist(), strict=True):
            unseen[name] = unseen.get(name, 0) + n
        result.add(Categories(np.zeros(len(categories), np.int64), unseen))
    return result


def category_codes(column: Any, categories: list[str]) -> np.ndarray:
    """Index into the reference categories; -1 for an unseen value, NaN for null."""
    codes = _category_index(column, categories).astype(np.float64)
    codes[~np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return codes


def _category_index(values: Any, categories: list[str]) -> np.ndarray:
    """Position of each value (as text) among `categories`, -1 when absent (and for null)."""
    text = _as_text(values)
    found = pc.index_in(text, value_set=pa.array(categories, type=text.type))
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _as_text(values: Any) -> Any:
    """Values as text: strings as they are (no copy), others as pandas' astype(str) writes them."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    return pa.array([None if v is None else str(v) for v in values.to_pylist()], type=pa.large_string())


def ts_range(table: pa.Table) -> tuple[int, int] | None:
    if "_ts" not in table.column_names or table.num_rows == table.column("_ts").null_count:
        return None
    bounds = pc.min_max(pc.cast(table.column("_ts"), pa.timestamp("us", tz="UTC")).cast(pa.int64()))
    return int(bounds["min"].as_py()), int(bounds["max"].as_py())


def column_kinds(schema: pa.Schema) -> dict[str, str]:
    return {f.name: arrow_kind(f.type) for f in schema}


def arrow_kind(kind: pa.DataType) -> str:
    if pa.types.is_null(kind):
        return "null"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "numeric"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return "string"
    return "other"
