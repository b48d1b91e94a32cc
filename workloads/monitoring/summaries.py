"""Merging capture summaries (workloads/capture/summary.py) into one window's statistics.

Counts add up exactly. The sample is thinned to about `SAMPLE_ROWS` rows, whatever the traffic:
every captured row drew a key u ~ U(0, 1), and the window's sample is every row with u < t for
t = min(SAMPLE_ROWS / window rows, each part's sampling rate). t depends only on row counts and
rates, never on the keys, so each row is in the sample independently with probability t (a
Bernoulli sample: given its size n, a uniform sample of n rows). Summaries keep their rows sorted
by key, so a part's share is a prefix: the first GET of each summary (`PREFIX_BYTES`) holds its
header and usually all of it; a second, ranged GET fetches the rest when it does not.

While parts are added, the window's row count only grows, so `bound()` only falls: rows kept
under an earlier bound are filtered again at the end, and memory stays near the final sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from workloads.capture.summary import INDEX_EVERY, Bins, Summary, header_length, parse_prefix

SAMPLE_ROWS = 50_000  # the window's sample; DKW at 95%: eps = sqrt(ln(40) / (2 n)) = 0.0061 for n = 50,000
PREFIX_BYTES = 16 * 1024
READERS = 8  # S3 GETs in flight

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int = READERS) -> Iterator[R]:
    """`map` on a thread pool, in order, with at most 2 x `workers` results waiting (bounded memory)."""
    with ThreadPoolExecutor(workers) as pool:
        pending: list[Any] = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


@dataclass
class Tail:
    """Where a summary's sample rows are, and how many its first GET brought (the rest may be needed)."""

    key: str
    start: int  # byte offset of the sample rows
    width: int  # floats per row
    total: int  # sample rows in the object
    read: int  # rows the first GET brought
    last: float  # the key of the last of them (-1 if none)
    index: list[float]  # every INDEX_EVERY-th key


def read_head(s3: Any, bucket: str, key: str) -> tuple[Summary, Tail]:
    """A summary's counts and first sample rows, from one GET (two if its header is long)."""
    data = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{PREFIX_BYTES - 1}")["Body"].read()
    parsed = parse_prefix(data)
    if parsed is None:  # a long header (many unseen categories): the rest of it
        end = header_length(data)
        data += s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={len(data)}-{end - 1}")["Body"].read()
        parsed = parse_prefix(data)
        if parsed is None:
            raise ValueError(f"{key}: truncated capture summary")
    header, start = parsed
    width = 1 + len(header["columns"])
    count = min((len(data) - start) // (8 * width), header["sample_rows"])
    rows = np.frombuffer(data, dtype="<f8", count=count * width, offset=start).reshape(count, width).copy()
    tail = Tail(key, start, width, header["sample_rows"], count, float(rows[-1, 0]) if count else -1.0,
                header["index"])
    return Summary.from_header(header, rows), tail


def read_more(s3: Any, bucket: str, tail: Tail, bound: float) -> np.ndarray:
    """The sample rows after the first GET's that may have a key below `bound` (sorted by key)."""
    if tail.read >= tail.total or tail.last >= bound:
        return np.empty((0, tail.width))
    # index[i] is row i * INDEX_EVERY's key: rows below `bound` end before the first index entry >= bound
    entries = int(np.searchsorted(np.asarray(tail.index), bound, "left"))
    stop = tail.total if entries >= len(tail.index) else entries * INDEX_EVERY
    if stop <= tail.read:
        return np.empty((0, tail.width))
    first = tail.start + 8 * tail.width * tail.read
    last = tail.start + 8 * tail.width * stop - 1
    data = s3.get_object(Bucket=bucket, Key=tail.key, Range=f"bytes={first}-{last}")["Body"].read()
    return np.frombuffer(data, dtype="<f8").reshape(-1, tail.width)


class Sampler:
    """The window's sampling threshold, min(parts' rates, target / window rows): only falls as
    rows are counted, so a row dropped under an earlier bound is never needed later."""

    def __init__(self, target: int | None = None) -> None:
        self.target = SAMPLE_ROWS if target is None else target
        self.rows = 0
        self.rate = 1.0

    def count(self, rows: int, rate: float = 1.0) -> None:
        self.rows += rows
        self.rate = min(self.rate, rate)

    def bound(self) -> float:
        return min(self.rate, self.target / max(self.rows, 1))


class Merger:
    """Counts of parts summarised on the same bins, and their sample rows under the sampler's bound."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.total: Summary | None = None
        self._kept: list[np.ndarray] = []
        self._kept_rows = 0

    def add(self, part: Summary) -> None:
        """A part's counts and (any of) its sample rows; its rows and rate must be counted in the sampler."""
        if self.total is None:
            self.total = part.counts_only()
        else:
            self.total.add_counts(part)
        self.keep(part.sample)

    def keep(self, rows: np.ndarray) -> None:
        rows = rows[rows[:, 0] < self.sampler.bound()] if len(rows) else rows
        if len(rows):
            self._kept.append(rows)
            self._kept_rows += len(rows)
        if self._kept_rows > 2 * self.sampler.target:  # compact under the current bound
            self._kept = [self.sample()]
            self._kept_rows = len(self._kept[0])

    def sample(self) -> np.ndarray:
        """Every kept row with a key below the final bound: the window's Bernoulli sample."""
        if not self._kept:
            return np.empty((0, 0))
        rows = np.concatenate(self._kept)
        return rows[rows[:, 0] < self.sampler.bound()]


def merge_tails(s3: Any, bucket: str, tails: list[Tail], merger: Merger) -> None:
    """What the final bound still needs from summaries whose first GET stopped short of it."""
    bound = merger.sampler.bound()
    for rows in bounded_map(lambda t: read_more(s3, bucket, t, bound), tails):
        merger.keep(rows)


def usable(summary: Summary | None, bins: Bins) -> bool:
    """A summary counted on the same bins as the window's champion (the same cached profiles)."""
    return summary is not None and summary.features_key == bins.features_key and (
        bins.prediction_key is None or summary.prediction_key == bins.prediction_key)


def parse(data: bytes) -> Summary:
    """A whole summary object (tests, tools)."""
    parsed = parse_prefix(data)
    if parsed is None:
        raise ValueError("truncated capture summary")
    header, start = parsed
    width = 1 + len(header["columns"])
    return Summary.from_header(header, np.frombuffer(data, dtype="<f8", offset=start).reshape(-1, width).copy())
