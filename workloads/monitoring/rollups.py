"""Hourly roll-ups: an hour's capture summaries merged once by the monitor, read as one object after.

A window over summaries reads one object per capture file (2,000 for a day of 50,000-row files).
An hour that has ended rarely changes, so after merging a window (current.py) the monitor writes,
per hour wholly inside it and per set of bins, the merged counts and the sample rows it holds
(every row below its bound t, so the roll-up's rate is t) as one summary at `layout.rollup_key`,
naming the capture files it covers (`sources`). The next run reads the roll-up instead of those
files; files that arrived later are read as usual; a roll-up naming a file no longer listed
(expired, deleted) is ignored. Its sample stays uniform: each row of those files is in it
independently with probability t, and t caps the next window's threshold like any part's rate
(summaries.py). Writing is best effort: a run that cannot write them is only slower next time.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from workloads import layout
from workloads.capture.summary import Summary
from workloads.monitoring.summaries import Merger, Tail, bounded_map, read_head

if TYPE_CHECKING:
    from workloads.monitoring.window import CapturedWindow

log = logging.getLogger(__name__)
Group = tuple[str | None, str | None, datetime]  # features profile, prediction profile, hour partition


def find(window: CapturedWindow, since: datetime, until: datetime) -> list[tuple[datetime, Summary, Tail]]:
    """The roll-ups of the hours wholly inside [since, until], with their counts and first sample rows."""
    from workloads.monitoring.window import partition_hour

    days, day = [], since.replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= until:
        days.append(day)
        day += timedelta(days=1)
    prefixes = [layout.rollups_prefix(window.endpoint, d) for d in days]
    keys = [key for listed in bounded_map(lambda p: _keys(window, p), prefixes) for key in listed]
    inside = [(hour, key) for key in keys
              if (hour := partition_hour(key)) and hour >= since and hour + timedelta(hours=1) <= until]
    heads = bounded_map(lambda item: read_head(window.s3, window.bucket, item[1]), inside)
    return [(hour, summary, tail) for (hour, _), (summary, tail) in zip(inside, heads, strict=True)]


def write(window: CapturedWindow, groups: dict[Group, Merger]) -> int:
    """A roll-up for each merged hour wholly inside the window that read a file's summary itself."""
    written = 0
    for keys, group in groups.items():
        features, prediction, hour = keys
        if group.total is None or keys not in window.fresh or not window.holds_hour(hour):
            continue
        rollup = group.total.counts_only()
        rollup.sample, rollup.rate = group.sample(), window.sampler.bound()
        rollup.sources = sorted(window.sources[keys])
        name = hashlib.sha256(f"{features}\0{prediction}".encode()).hexdigest()[:12]
        try:
            window.s3.put_object(Bucket=window.bucket, Key=layout.rollup_key(window.endpoint, hour, name),
                                 Body=rollup.to_bytes())
        except Exception as exc:  # an optimisation only: the next run reads the files instead
            log.warning("monitor: could not write the %s roll-up (%s)", hour.isoformat(), exc)
            continue
        written += 1
    return written


def _keys(window: CapturedWindow, prefix: str) -> list[str]:
    pages = window.s3.get_paginator("list_objects_v2").paginate(Bucket=window.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".summary")]


def covered_files(rollups: list[tuple[datetime, Summary, Tail]], listed: dict[str, Any]
                  ) -> list[tuple[datetime, Summary, Tail]]:
    """The roll-ups whose files are all still listed, each file covered once (else read the files)."""
    taken: set[str] = set()
    usable = []
    for hour, summary, tail in rollups:
        sources = set(summary.sources)
        if sources and sources <= listed.keys() and not sources & taken:
            taken |= sources
            usable.append((hour, summary, tail))
    return usable
