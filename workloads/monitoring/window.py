"""The captured window: the rows `mlops serve` captured for an endpoint, by time or by count.

Capture files are partitioned by hour (`layout.capture_key`); the window reads the partitions
it needs (in parallel), then trims by each row's `_ts` (captured) and `_row` (row in request).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from workloads import layout
from workloads.environment import Environment

READERS = 8  # S3 GETs in flight


def load_window(
    env: Environment, endpoint: str, *, hours: float, records: int | None = None, now: datetime | None = None,
) -> pd.DataFrame:
    """Captured rows of `endpoint`: the last `records` rows when set, else those of the last `hours`."""
    now = now or datetime.now(UTC)
    since = None if records is not None else now - timedelta(hours=hours)
    files = _capture_files(env, endpoint, since, now)
    with ThreadPoolExecutor(READERS) as pool:
        def read(keys: list[str]) -> list[pd.DataFrame]:
            return list(pool.map(lambda key: _read(env, key), keys))

        frames = read([k for _, k in files]) if records is None else _newest_hours(files, records, read)
    if not frames:
        return pd.DataFrame()
    window = _in_time_order(pd.concat(frames, ignore_index=True))
    if since is not None and "_ts" in window.columns:
        window = window[(window["_ts"] >= since) & (window["_ts"] <= now)]
    if records is not None:
        window = window.tail(records)
    return window.reset_index(drop=True)


def describe(window: pd.DataFrame, *, hours: float, records: int | None, now: datetime) -> dict[str, Any]:
    """The window as the result and the report show it."""
    span: dict[str, Any] = {"rows": len(window), "hours": hours if records is None else None,
                            "records": records, "end": now.isoformat()}
    if len(window) and "_ts" in window.columns:
        span |= {"first": window["_ts"].min().isoformat(), "last": window["_ts"].max().isoformat()}
    return span


def partition_hour(key: str) -> datetime | None:
    """The hour a capture file belongs to, from its `dt=YYYY-MM-DD/hour=HH/` path."""
    parts = dict(p.split("=", 1) for p in key.split("/") if p.startswith(("dt=", "hour=")))
    try:
        return datetime.strptime(f"{parts['dt']} {parts['hour']}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return None


def _capture_files(env: Environment, endpoint: str, since: datetime | None, now: datetime
                   ) -> list[tuple[datetime, str]]:
    """(hour, key) of every capture file, newest first; only the hours from `since` to `now` when set."""
    pages = env.s3.get_paginator("list_objects_v2").paginate(
        Bucket=env.outputs.capture_bucket, Prefix=layout.capture_prefix(endpoint))
    keys = [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".parquet")]
    dated = sorted(((h, k) for k in keys if (h := partition_hour(k))), reverse=True)
    if since is None:
        return dated
    floor = since.replace(minute=0, second=0, microsecond=0)
    return [(h, k) for h, k in dated if floor <= h <= now]


def _newest_hours(files: list[tuple[datetime, str]], records: int,
                  read: Callable[[list[str]], list[pd.DataFrame]]) -> list[pd.DataFrame]:
    """Whole hours, newest first, until they hold at least `records` rows."""
    frames: list[pd.DataFrame] = []
    for hour in sorted({h for h, _ in files}, reverse=True):
        frames += read([k for h, k in files if h == hour])
        if sum(len(f) for f in frames) >= records:
            break
    return frames


def _read(env: Environment, key: str) -> pd.DataFrame:
    body = env.s3.get_object(Bucket=env.outputs.capture_bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def _in_time_order(window: pd.DataFrame) -> pd.DataFrame:
    if "_ts" not in window.columns:
        return window
    window["_ts"] = pd.to_datetime(window["_ts"], utc=True)
    return window.sort_values(["_ts", "_row"] if "_row" in window.columns else ["_ts"], kind="stable")
