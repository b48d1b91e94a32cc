"""Which columns are features: all but the target, `exclude` and identifier-like columns.

An identifier left among the features is one-hot encoded into as many columns as the data
has rows (measured on 5,000 rows: 54 s and 562 MB instead of 9 s and 365 MB) and teaches the
model nothing that holds for new rows. A column is identifier-like when
- its name says so: `id`, `uuid`, `guid`, or ending in `_id`/`-id`/`.id` (also uuid/guid), or
  camelCase `customerId`/`customerID`; or
- it is text with more than `id_columns.max_unique_ratio` distinct values per non-missing value
  (and more than MIN_DISTINCT distinct values: a small table's few categories are not judged).
Numeric columns are judged by name only: amounts and measurements are distinct by nature.
`id_columns.action: drop` (default) drops them with a message; `refuse` stops with exit 2.

`frame` is what the model fits and is scored on: the feature columns with missing values as
serving sees them (workloads/data/missing.py, the one definition of missing on both paths).
"""

from __future__ import annotations

import re

import pandas as pd

from workloads.data import missing
from workloads.data.schema import kind_of
from workloads.training.errors import SpecError
from workloads.training.spec import TrainingSpec

MIN_DISTINCT = 20
_SEPARATED = re.compile(r"(?i)(^|[_\-. ])(id|uuid|guid)$")
_CAMEL = re.compile(r"[a-z0-9](Id|ID|Uuid|UUID|Guid|GUID)$")


def why_id_like(name: str, col: pd.Series, max_unique_ratio: float) -> str | None:
    """Why `col` looks like an identifier, or None."""
    if _SEPARATED.search(name) or _CAMEL.search(name):
        return "its name marks an identifier"
    if kind_of(col) != "string":
        return None
    present = int(col.notna().sum())
    distinct = int(col.nunique(dropna=True))
    if distinct > MIN_DISTINCT and present and distinct / present > max_unique_ratio:
        return (f"{distinct} distinct values in {present} rows (ratio {distinct / present:.2f} > "
                f"id_columns.max_unique_ratio {max_unique_ratio})")
    return None


def select(df: pd.DataFrame, spec: TrainingSpec) -> tuple[list[str], dict[str, str]]:
    """The feature columns of `df` (bookkeeping columns already removed) and the dropped ones with why."""
    candidates = [c for c in df.columns if c != spec.target and c not in spec.exclude]
    flagged = {c: why for c in candidates
               if (why := why_id_like(str(c), df[c], spec.id_columns.max_unique_ratio)) is not None}
    if flagged and spec.id_columns.action == "refuse":
        listed = "; ".join(f"{c!r}: {why}" for c, why in flagged.items())
        raise SpecError(f"id_columns: identifier-like feature column(s) {listed}; add them to exclude, or set "
                        "id_columns.action: drop")
    return [c for c in candidates if c not in flagged], flagged


def frame(df: pd.DataFrame, chosen: list[str]) -> pd.DataFrame:
    """The feature columns the model fits on, `null`/None/NaN/"" all as NaN: exactly what serving hands
    the model for the same row, so the imputers treat a missing category the same way on both paths."""
    return missing.normalized(df[chosen])
