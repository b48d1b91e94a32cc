"""What "missing" means for a feature value: one definition for training and serving.

A value is missing when it is JSON `null` / Python `None`, a float NaN, `pd.NA` or `NaT`, or the
empty string `""` in a text column. Every missing value becomes NaN, the one marker the training
pipeline's imputers replace (sklearn's `SimpleImputer(missing_values=np.nan)`).

Why these and only these:
- `None` in an object column is not NaN to sklearn (it compares values with `!=`), so it passes the
  imputer and one-hot encodes as a category training never saw (all zeros): the model then answers
  something else for the row than it would for the same row with NaN (train/serve skew).
- `""` counts because CSV cannot tell an empty field from a missing one: pandas reads both as NaN,
  in training datasets and in serving's CSV parser alike. Were `""` a category, the same row would
  score differently sent as CSV or as JSON, and a Parquet dataset would train on a category a CSV
  one never has.
- Whitespace-only text, "None", "null", "NA" are values: a client that means missing sends `null`.

Training applies it to the feature columns it fits on (workloads/training/features.py), serving to
every parsed request before validation (workloads/serving/protocol.py, fast_path.py), the monitor to
the reference rows it scores (workloads/monitoring/reference.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EMPTY = ""  # the one text value that means missing


def is_text(col: pd.Series) -> bool:
    """Columns holding text (object, pandas' string dtypes, categoricals): where `None` and `""` occur."""
    return (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)
            or isinstance(col.dtype, pd.CategoricalDtype))


def missing_mask(col: pd.Series) -> np.ndarray:
    """Which values of `col` are missing (see the module docstring)."""
    absent = col.isna().to_numpy(dtype=bool)
    if not is_text(col):
        return absent
    return absent | (col == EMPTY).fillna(False).to_numpy(dtype=bool)


def normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every missing value of a text column as NaN (numeric columns already hold NaN).
    Returns `frame` itself when nothing needs to change (the serving hot path: no copy)."""
    changes = {}
    for name in frame.columns:
        col = frame[name]
        if not is_text(col):
            continue
        mask = missing_mask(col)
        # Already NaN where missing (pandas' str dtype stores NaN): nothing to do for this column.
        if mask.any() and not _all_nan(col, mask):
            changes[name] = _with_nan(col, mask)
    if not changes:
        return frame
    out = frame.copy()
    for name, col in changes.items():
        out[name] = col
    return out


def _all_nan(col: pd.Series, mask: np.ndarray) -> bool:
    missing = col[mask]
    return bool(all(isinstance(v, float) and v != v for v in missing.array))


def _with_nan(col: pd.Series, mask: np.ndarray) -> pd.Series:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.mask(pd.Series(mask, index=col.index))  # a categorical's missing code is NaN already
    values = col.astype(object) if pd.api.types.is_object_dtype(col) else col
    return values.mask(pd.Series(mask, index=col.index), np.nan)
