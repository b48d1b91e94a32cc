"""The captured window: the rows `mlops serve` captured for an endpoint, by time or by count.

Capture files are partitioned by hour (`layout.capture_key`), most with a summary beside them
(workloads/capture/summary.py), and past hours rolled up by an earlier run (rollups.py). Loading a
window reads no rows: per roll-up or file, its summary's header (one ranged GET) or, without one,
its Parquet footer, gives its row count and `_ts` bounds. A file
inside the window counts whole; one across the window's start (or the oldest file a records
window needs) is trimmed by reading its `_ts` (and `_row`) column. So the window's size and
span (`describe`) and its columns and types (`integrity_problems`) cost nothing per row.

Its statistics (`CapturedWindow.current`, current.py) and labelled rows (`labelled`) read rows
only in bounded batches (stream.py). A file that cannot be read within that bound (written
before capture capped strings) is skipped and reported, never loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workloads import layout
from workloads.capture.summary import Summary, summary_key
from workloads.environment import Environment
from workloads.monitoring.labels import labelled_rows
from workloads.monitoring.profile import ReferenceProfile
from workloads.monitoring.rollups import Group, covered_files, find
from workloads.monitoring.stream import TooLarge, batches, check, file_info, open_file
from workloads.monitoring.summaries import Merger, Sampler, Tail, bounded_map, read_head

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SKIPPED_LISTED = 10  # skipped files named in the description (all are counted)


@dataclass
class Part:
    """One capture file of the window and which of its rows are in it."""

    key: str
    size: int
    rows: int
    ts: tuple[int, int] | None  # `_ts` bounds, microseconds since the epoch
    kinds: dict[str, str]
    summary: Summary | None = None  # until merged into its group
    tail: Tail | None = None
    group: Group | None = None  # the bins it was summarised on and its hour, once merged
    hour: datetime | None = None  # its partition
    sources: list[tuple[str, int]] | None = None  # a roll-up's capture files (key, size): read these for rows
    since: int | None = None  # rows with `_ts` in [since, until] only (a file across the window's start)
    until: int | None = None
    mask: np.ndarray | None = None  # rows by position (the oldest file of a records window)
    count: int = 0  # rows in the window
    first: int | None = None
    last: int | None = None

    @property
    def whole(self) -> bool:
        return self.since is None and self.mask is None


@dataclass
class CapturedWindow:
    """The window's files, their summaries merged by the bins they were counted on."""

    s3: Any
    bucket: str
    endpoint: str = ""
    since: datetime | None = None  # a window by hours: [since, until]
    until: datetime | None = None
    parts: list[Part] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sampler: Sampler = field(default_factory=Sampler)
    groups: dict[Group, Merger] = field(default_factory=dict)
    tails: dict[Group, list[Tail]] = field(default_factory=dict)
    sources: dict[Group, list[str]] = field(default_factory=dict)  # capture files merged into each group
    fresh: set[Group] = field(default_factory=set)  # groups with a file's own summary (not only roll-ups)
    sample: pd.DataFrame = field(default_factory=pd.DataFrame)  # set by `current`

    def __len__(self) -> int:
        return sum(p.count for p in self.parts)

    def holds_hour(self, hour: datetime) -> bool:
        """The whole hour partition is inside this window (a window by hours)."""
        return self.since is not None and self.until is not None and self.since <= hour \
            and hour + timedelta(hours=1) <= self.until

    @property
    def kinds(self) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        for part in self.parts:
            for name, kind in part.kinds.items():
                seen.setdefault(name, set()).add(kind)
        return seen

    def integrity_problems(self, profile: ReferenceProfile) -> list[str]:
        """Why the window cannot be compared: a feature in no file, or not numeric where the reference is."""
        kinds = self.kinds
        problems = [f"column {c!r} is missing" for c in profile.columns if c not in kinds]
        for name in profile.numeric:
            wrong = sorted(kinds.get(name, set()) - {"numeric", "bool", "null"})
            if wrong:
                problems.append(f"column {name!r} should be numeric, got {', '.join(wrong)}")
        return problems

    def current(self, champion: Any, profile: ReferenceProfile, prediction_profile: ReferenceProfile | None,
                exact_rows: int) -> Any:
        """The window's drift input (drift.Current); see current.py."""
        from workloads.monitoring.current import window_current

        return window_current(self, champion, profile, prediction_profile, exact_rows)

    def read(self, part: Part, columns: list[str] | None) -> Iterator[pa.Table]:
        """The part's rows in the window, `columns` only (absent ones as nulls), in bounded batches."""
        if part.sources is not None:  # a roll-up: its files, whole
            for key, size in part.sources:
                yield from self.read(Part(key, size, 0, None, {}), columns)
            return
        parquet = open_file(self.s3, self.bucket, part.key, part.size)
        wanted = columns or parquet.schema_arrow.names
        offset = 0
        for table in batches(parquet, wanted):
            keep = self._keep(part, table, offset)
            offset += table.num_rows
            if keep is not None:
                table = table.filter(pa.array(keep))
            for name in wanted:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows))
            yield table

    @staticmethod
    def _keep(part: Part, table: pa.Table, offset: int) -> np.ndarray | None:
        if part.mask is not None:
            return part.mask[offset:offset + table.num_rows]
        if part.since is None:
            return None
        stamps = _micros(table.column("_ts"))
        return (stamps >= part.since) & (stamps <= (part.until if part.until is not None else stamps.max()))

    def labelled(self, labels: pd.DataFrame) -> pd.DataFrame:
        """The window's rows that have a label (a `label` column added), read in bounded batches."""
        if labels.empty:
            return pd.DataFrame()
        ids = pa.array(labels["request_id"].astype(str).unique(), type=pa.large_string())
        frames = []
        for part in self.parts:
            for table in self._readable(part, None):
                matched = table.filter(pc.is_in(table.column("_request_id").cast(pa.large_string()), value_set=ids))
                if matched.num_rows:
                    frames.append(labelled_rows(matched.to_pandas(), labels))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _readable(self, part: Part, columns: list[str] | None) -> Iterator[pa.Table]:
        """`read`, except that a file too large to read in bounds is skipped (and reported)."""
        try:
            yield from self.read(part, columns)
        except TooLarge as exc:
            self.skipped.append((part.key, str(exc)))


def load_window(
    env: Environment, endpoint: str, *, hours: float, records: int | None = None, now: datetime | None = None,
) -> CapturedWindow:
    """Captured rows of `endpoint`: the last `records` rows when set, else those of the last `hours`."""
    return read_window(env.s3, env.outputs.capture_bucket, endpoint, hours=hours, records=records, now=now)


def read_window(s3: Any, bucket: str, endpoint: str, *, hours: float, records: int | None = None,
                now: datetime | None = None) -> CapturedWindow:
    """`load_window` on any S3 client and bucket (benchmarks, tests)."""
    now = now or datetime.now(UTC)
    since = None if records is not None else now - timedelta(hours=hours)
    window = CapturedWindow(s3, bucket, endpoint, since, now if since is not None else None)
    if records is None:
        rollups = find(window, now - timedelta(hours=hours), now)
        _plan_hours(window, _listed_hours(window, endpoint, since, now), rollups)
    else:
        _plan_records(window, _capture_files(window, endpoint, since, now), records)
    return window


def describe(window: CapturedWindow, *, hours: float, records: int | None, now: datetime) -> dict[str, Any]:
    """The window as the result and the report show it."""
    files = {p.key: len(p.sources or [1]) for p in window.parts}
    span: dict[str, Any] = {"rows": len(window), "hours": hours if records is None else None,
                            "records": records, "end": now.isoformat(), "files": sum(files.values()),
                            "summarised_files": sum(files[p.key] for p in window.parts if p.group is not None),
                            "rollups": sum(p.sources is not None for p in window.parts)}
    firsts = [p.first for p in window.parts if p.count and p.first is not None]
    lasts = [p.last for p in window.parts if p.count and p.last is not None]
    if firsts and lasts:
        span |= {"first": _time(min(firsts)).isoformat(), "last": _time(max(lasts)).isoformat()}
    if window.skipped:
        span["skipped_files"] = len(window.skipped)
        span["skipped"] = [f"{key}: {why}" for key, why in window.skipped[:MAX_SKIPPED_LISTED]]
    return span


def partition_hour(key: str) -> datetime | None:
    """The hour a capture file belongs to, from its `dt=YYYY-MM-DD/hour=HH/` path."""
    parts = dict(p.split("=", 1) for p in key.split("/") if p.startswith(("dt=", "hour=")))
    try:
        return datetime.strptime(f"{parts['dt']} {parts['hour']}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return None


# --- planning --------------------------------------------------------------------------------

File = tuple[datetime, str, int, str | None]  # partition hour, key, size, summary key (when there is one)


def _capture_files(window: CapturedWindow, endpoint: str, since: datetime | None, now: datetime) -> list[File]:
    """Every capture file, newest partition first; only the hours from `since` to `now` when set."""
    return [file for _, files in _listed_hours(window, endpoint, since, now) for file in files]


def _listed_hours(window: CapturedWindow, endpoint: str, since: datetime | None, now: datetime
                  ) -> Iterator[tuple[datetime | None, list[File]]]:
    """Each listed hour partition (newest first) and its capture files (by key, descending), as its
    listing arrives: the hours from `since` to `now` are listed hour by hour (the cost does not
    grow with the retained history), concurrently, and a caller reads an hour's summaries while
    the next hours are still being listed. Without `since`, one listing of every partition (hour None)."""
    if since is None:
        prefixes: list[tuple[datetime | None, str]] = [(None, layout.capture_prefix(endpoint))]
    else:
        hour, prefixes = now.replace(minute=0, second=0, microsecond=0), []
        while hour >= since.replace(minute=0, second=0, microsecond=0):
            prefixes.append((hour, layout.capture_key(endpoint, hour, "").removesuffix(".parquet")))
            hour -= timedelta(hours=1)
    for (listed, _), objects in zip(prefixes, bounded_map(lambda p: _list(window, p[1]), prefixes), strict=True):
        files = [(h, k, size, summary_key(k) if summary_key(k) in objects else None)
                 for k, size in objects.items() if k.endswith(".parquet") and (h := partition_hour(k))]
        yield listed, sorted(files, key=lambda f: (f[0], f[1]), reverse=True)


def _list(window: CapturedWindow, prefix: str) -> dict[str, int]:
    pages = window.s3.get_paginator("list_objects_v2").paginate(Bucket=window.bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def _describe_file(window: CapturedWindow, file: File) -> Part | None:
    """A file's rows, `_ts` bounds and column kinds, from its summary's header or its footer."""
    hour, key, size, summary = file
    if summary is not None:
        head, tail = read_head(window.s3, window.bucket, summary)
        return Part(key, size, head.rows, head.ts, head.kinds, head, tail, hour=hour)
    try:
        parquet = open_file(window.s3, window.bucket, key, size)
        check(parquet)  # a file from before capture's caps may not be readable in bounds: not counted
        info = file_info(parquet)
    except TooLarge as exc:
        window.skipped.append((key, str(exc)))
        return None
    except (pa.ArrowException, OSError) as exc:  # not Parquet (any more): nothing to read
        window.skipped.append((key, f"unreadable: {exc}"))
        return None
    return Part(key, size, info.rows, info.ts, info.kinds, hour=hour)


def _plan_hours(window: CapturedWindow, hours: Iterator[tuple[datetime | None, list[File]]],
                rollups: list[Any]) -> None:
    """Each hour's usable roll-ups admitted, and its other files' summaries (or footers) read and
    merged as they arrive: at most 2 x READERS parts decoded at a time, whatever the window."""
    assert window.since is not None and window.until is not None
    since, until = _us(window.since), _us(window.until)
    for part in bounded_map(lambda f: _describe_file(window, f), _unrolled(window, hours, rollups)):
        if part is None:
            continue
        if part.ts is not None and (part.ts[1] < since or part.ts[0] > until):
            continue  # outside the window
        if "_ts" in part.kinds and (part.ts is None or part.ts[0] < since or part.ts[1] > until):
            part.since, part.until = since, until  # across the window's edge: its rows are counted
            _trim(window, part)
        else:
            part.count, (part.first, part.last) = part.rows, part.ts or (None, None)
        _admit(window, part)


def _unrolled(window: CapturedWindow, hours: Iterator[tuple[datetime | None, list[File]]],
              rollups: list[Any]) -> Iterator[File]:
    """The listed files no usable roll-up covers; each hour's roll-ups admitted when it is listed
    (a roll-up names files of its own hour only, so its hour's listing decides whether it is usable)."""
    for listed_hour, files in hours:
        listed = {f[1]: f for f in files}
        covered: set[str] = set()
        for hour, summary, tail in covered_files([r for r in rollups if r[0] == listed_hour], listed):
            rolled = Part(tail.key, 0, summary.rows, summary.ts, summary.kinds, summary, tail, hour=hour,
                          sources=[(k, listed[k][2]) for k in summary.sources])
            rolled.count, (rolled.first, rolled.last) = rolled.rows, rolled.ts or (None, None)
            covered |= set(summary.sources)
            _admit(window, rolled)
        yield from (f for f in files if f[1] not in covered)


def _plan_records(window: CapturedWindow, files: list[File], records: int) -> None:
    """The newest files until they hold `records` rows (whole partitions at a time, newest first)."""
    parts: list[Part] = []
    for hour in sorted({f[0] for f in files}, reverse=True):
        parts += [p for p in bounded_map(lambda f: _describe_file(window, f), [f for f in files if f[0] == hour])
                  if p is not None]
        if sum(p.rows for p in parts) >= records:
            break
    parts.sort(key=lambda p: (p.ts or (-1, -1))[::-1], reverse=True)
    taken = 0
    for part in parts:
        if taken >= records:
            break
        if taken + part.rows > records and "_ts" in part.kinds:
            _newest_rows(window, part, records - taken)
        else:
            part.count, (part.first, part.last) = part.rows, part.ts or (None, None)
        taken += part.count
        _admit(window, part)


def _admit(window: CapturedWindow, part: Part) -> None:
    """Into the window: rows counted for the sampler; a whole summarised file merged into its group now."""
    window.parts.append(part)
    window.sampler.count(part.count, part.summary.rate if part.summary is not None and part.whole else 1.0)
    if part.summary is not None and part.whole and part.hour is not None:
        keys = (part.summary.features_key, part.summary.prediction_key, part.hour)
        window.groups.setdefault(keys, Merger(window.sampler)).add(part.summary)
        if part.tail is not None:
            window.tails.setdefault(keys, []).append(part.tail)
        window.sources.setdefault(keys, []).extend(k for k, _ in part.sources or [(part.key, 0)])
        if part.sources is None:
            window.fresh.add(keys)
        part.group = keys
    part.summary = None  # a trimmed file is read, not summed


def _trim(window: CapturedWindow, part: Part) -> None:
    """Count a file's rows inside [since, until] by reading its `_ts`."""
    firsts, lasts = [], []
    for table in window._readable(part, ["_ts"]):
        stamps = _micros(table.column("_ts"))
        part.count += len(stamps)
        if len(stamps):
            firsts.append(int(stamps.min()))
            lasts.append(int(stamps.max()))
    part.first, part.last = (min(firsts), max(lasts)) if firsts else (None, None)


def _newest_rows(window: CapturedWindow, part: Part, wanted: int) -> None:
    """Keep a file's newest `wanted` rows, by (`_ts`, `_row`, position) as the window orders rows."""
    stamps, rows = [], []
    for table in window._readable(part, ["_ts", "_row"]):
        stamps.append(_micros(table.column("_ts")))
        rows.append(np.asarray(pc.fill_null(table.column("_row"), 0).to_numpy(zero_copy_only=False)))
    if not stamps:
        return
    ts, row = np.concatenate(stamps), np.concatenate(rows)
    newest = np.lexsort((np.arange(len(ts)), row, ts))[-wanted:]
    part.mask = np.zeros(len(ts), bool)
    part.mask[newest] = True
    part.count, part.first, part.last = int(part.mask.sum()), int(ts[newest].min()), int(ts[newest].max())


def _micros(column: Any) -> np.ndarray:
    """`_ts` as int64 microseconds since the epoch (null as the smallest value: outside any window)."""
    stamps = pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return np.asarray(pc.fill_null(stamps, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False))


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
