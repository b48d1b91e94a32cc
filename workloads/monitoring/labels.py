"""Ground truth for captured rows: read from a file or an S3 prefix, joined to the window.

A label names the captured row it belongs to by `request_id` (the capture's `_request_id`) and
`row` (the capture's `_row`, the row within the request; 0 when absent).
"""

from __future__ import annotations

from urllib.parse import urlparse

import pandas as pd

from workloads.data import dataset as datasets
from workloads.environment import Environment
from workloads.monitoring.result import MonitorError

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def load_labels(source: str, env: Environment) -> pd.DataFrame:
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
    )
    # the newest label wins when one arrives twice
    return labels.drop_duplicates(["request_id", "row"], keep="last")[["request_id", "row", "label"]]


def labelled_rows(window: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The window's rows that have a label (a `label` column added)."""
    keyed = window.assign(_request_id=window["_request_id"].astype(str), _row=window["_row"].astype(int))
    return keyed.merge(labels, left_on=["_request_id", "_row"], right_on=["request_id", "row"], how="inner")


def _tables_under(prefix: str, env: Environment) -> list[str]:
    url = urlparse(prefix)
    pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=url.netloc, Prefix=url.path.lstrip("/"))
    return [f"s3://{url.netloc}/{o['Key']}" for page in pages for o in page.get("Contents", [])
            if o["Key"].lower().endswith(TABLE_SUFFIXES)]
