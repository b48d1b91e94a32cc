"""Ground truth for captured rows: read from a file or an S3 prefix, joined to the window.

A label names the captured row it belongs to by `request_id` (the capture's `_request_id`, the id
the server assigned: a client's X-Request-Id is never captured, workloads/serving/asgi.py) and `row`
(the capture's `_row`, the row within the request; 0 when absent). On a stack the source is
`labels/<endpoint>/` (components/config_sections.py), which only the labeler identity may write.

The join is one-to-one or nothing. A key that repeats would let one label score several rows (an
attacker re-using an id doubled the labelled rows and moved roc_auc from 0.83 to 0.22), so:
- a label given twice with the same value is used once (a file uploaded twice); given with different
  values, it is dropped: which one is true is unknown;
- a captured row stored twice (same key and capture time: a flush retried after a write that did land)
  is used once; a key captured by different requests (ids re-used) is dropped with all its rows.
Each kind is counted (`LabelsJoined`, in the result and the run's summary) and named in the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pandas as pd

from workloads.data import dataset as datasets
from workloads.environment import Environment
from workloads.monitoring.result import LabelsJoined, MonitorError

if TYPE_CHECKING:
    from workloads.monitoring.window import CapturedWindow

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
LABEL_KEY = ["request_id", "row"]
CAPTURE_KEY = ["_request_id", "_row"]


@dataclass(frozen=True)
class Labels:
    """One label per (request_id, row), and how many keys were given more than once."""

    table: pd.DataFrame  # request_id, row, label
    read: int  # label rows read
    repeated: int  # keys given more than once with one value: used once
    conflicting: int  # keys given different values: dropped


@dataclass(frozen=True)
class Joined:
    """The window's labelled rows, each captured row once, and what was refused on the way."""

    rows: pd.DataFrame
    counts: LabelsJoined

    def notes(self) -> list[str]:
        """The reasons' lines for what was dropped (nothing when the join was clean)."""
        c, notes = self.counts, []
        if c.conflicting_labels:
            notes.append(f"labels: {c.conflicting_labels} (request_id, row) given conflicting labels: not used")
        if c.reused_ids:
            notes.append(f"labels: {c.reused_ids} (request_id, row) captured by more than one request "
                         f"({c.reused_id_rows} rows): not used; the server assigns ids, so a repeat means a replay "
                         "or captures not written by `mlops serve`")
        return notes


def load_labels(source: str, env: Environment) -> Labels:
    """Labels from a CSV/Parquet file or s3:// URI, or every such file under an s3:// prefix."""
    if source.startswith("s3://") and not source.lower().endswith(TABLE_SUFFIXES):
        frames = [datasets.load(uri, env) for uri in _tables_under(source, env)]
        labels = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["request_id", "label"])
    else:
        labels = datasets.load(source, env)
    missing = {"request_id", "label"} - set(labels.columns)
    if missing:
        raise MonitorError(f"labels {source}: missing column(s) {sorted(missing)}; expected request_id, [row,] label")
    labels = labels.assign(
        request_id=labels["request_id"].astype(str),
        row=labels["row"].fillna(0).astype(int) if "row" in labels.columns else 0,
    )[["request_id", "row", "label"]]
    return one_per_key(labels)


def one_per_key(labels: pd.DataFrame) -> Labels:
    """Each key's label once; keys with conflicting labels dropped (see the module docstring)."""
    distinct = labels.drop_duplicates()  # the same label given twice: once
    conflict = distinct.duplicated(LABEL_KEY, keep=False)
    conflicting = int(distinct[conflict].drop_duplicates(LABEL_KEY).shape[0])
    repeated = int(labels[labels.duplicated(LABEL_KEY, keep=False)].drop_duplicates(LABEL_KEY).shape[0])
    return Labels(distinct[~conflict].reset_index(drop=True), read=len(labels), repeated=repeated - conflicting,
                  conflicting=conflicting)


def join_labels(window: CapturedWindow, labels: Labels) -> Joined:
    """The window's rows that have a label, one-to-one; repeated captured keys refused."""
    matched = window.labelled(labels.table)
    rows, reused, reused_rows, replayed = one_row_per_key(matched)
    counts = LabelsJoined(read=labels.read, repeated_labels=labels.repeated, conflicting_labels=labels.conflicting,
                          joined_rows=len(rows), reused_ids=reused, reused_id_rows=reused_rows,
                          replayed_rows=replayed)
    return Joined(rows, counts)


def one_row_per_key(matched: pd.DataFrame) -> tuple[pd.DataFrame, int, int, int]:
    """(rows, keys captured by several requests, their rows, identical copies dropped) of joined rows."""
    if matched.empty:
        return matched, 0, 0, 0
    stamped = [*CAPTURE_KEY, "_ts"] if "_ts" in matched.columns else CAPTURE_KEY
    unique = matched.drop_duplicates(stamped)  # the same record stored twice: one row
    reused = unique.duplicated(CAPTURE_KEY, keep=False)
    kept = unique[~reused].reset_index(drop=True)
    keys = int(unique[reused].drop_duplicates(CAPTURE_KEY).shape[0])
    return kept, keys, int(reused.sum()), len(matched) - len(unique)


def labelled_rows(window: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The window's rows that have a label (a `label` column added)."""
    keyed = window.assign(_request_id=window["_request_id"].astype(str), _row=window["_row"].astype(int))
    return keyed.merge(labels, left_on=CAPTURE_KEY, right_on=LABEL_KEY, how="inner")


def _tables_under(prefix: str, env: Environment) -> list[str]:
    url = urlparse(prefix)
    pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=url.path.lstrip("/"))
    return [f"s3://{url.netloc}/{o['Key']}" for page in pages for o in page.get("Contents", [])
            if o["Key"].lower().endswith(TABLE_SUFFIXES)]
