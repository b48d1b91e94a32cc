"""Which rows of a dataset a model trains on and which rows score it.

A dataset may carry a `_split` column naming each row's role:
- `train`: trained on;
- `holdout`: never trained on; scores the model. After drift these are the champion's own
  holdout rows: the challenger must not do much worse on them (the guard against forgetting);
- `recent_train`: labelled captured rows the challenger trains on (weighted by the spec's
  `retraining.recent_weight`);
- `recent_holdout`: labelled captured rows held back: the gate compares champion and
  challenger on them, rows neither was trained on.
Without the column, `roles` is the seeded (stratified) train/holdout split training has always
made (`dataset.split`). `_source_row` names a captured row (`<request_id>/<row>`), so a
captured row is added to a dataset once. Both columns are bookkeeping, never features.
The retraining data the monitor writes (workloads/monitoring/retrain.py) carries both, so a
retraining Job in the cluster trains and gates on exactly the rows the monitor chose.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workloads.data import dataset
from workloads.data.dataset import DataError

SPLIT, SOURCE_ROW = "_split", "_source_row"
RESERVED = (SPLIT, SOURCE_ROW)
TRAIN, HOLDOUT, RECENT_TRAIN, RECENT_HOLDOUT = "train", "holdout", "recent_train", "recent_holdout"
ROLES = (TRAIN, HOLDOUT, RECENT_TRAIN, RECENT_HOLDOUT)
TRAINED = (TRAIN, RECENT_TRAIN)
# What a model's rows become in the next retraining's data: what it trained on is old training
# data, what it never trained on is the holdout that guards the next challenger.
AGED = {TRAIN: TRAIN, RECENT_TRAIN: TRAIN, HOLDOUT: HOLDOUT, RECENT_HOLDOUT: HOLDOUT}


def payload(df: pd.DataFrame) -> pd.DataFrame:
    """The data without the bookkeeping columns: what schemas describe and features come from."""
    return df.drop(columns=[c for c in RESERVED if c in df.columns])


def roles(df: pd.DataFrame, target: str, *, classification: bool, seed: int, holdout_fraction: float) -> pd.Series:
    """Each row's role: the `_split` column when present, else the seeded train/holdout split."""
    if SPLIT in df.columns:
        values = df[SPLIT].astype(str)
        unknown = sorted(set(values) - set(ROLES))
        if unknown:
            raise DataError(f"column {SPLIT}: unknown role(s) {unknown}; allowed: {', '.join(ROLES)}")
        trained = values.isin(TRAINED)
        if trained.all() or not trained.any():
            raise DataError(f"column {SPLIT}: needs rows to train on ({'/'.join(TRAINED)}) and rows to score "
                            f"({HOLDOUT}/{RECENT_HOLDOUT})")
        if (values == RECENT_HOLDOUT).any() and not (values == HOLDOUT).any():
            raise DataError(f"column {SPLIT}: {RECENT_HOLDOUT} rows need {HOLDOUT} rows beside them "
                            "(the champion's holdout, the guard against forgetting)")
        return values
    train, _ = dataset.split(df, target, classification=classification, seed=seed,
                             holdout_fraction=holdout_fraction)
    return pd.Series(np.where(df.index.isin(train.index), TRAIN, HOLDOUT), index=df.index)


def split_recent(rows: pd.DataFrame, target: str, *, classification: bool, seed: int,
                 holdout_fraction: float) -> pd.Series:
    """Labelled captured rows: `recent_holdout` for a seeded share, `recent_train` for the rest.

    Stratified when every class has at least two rows; rows must already be in a deterministic
    order (the caller sorts them), so the same rows always split the same way.
    """
    from sklearn.model_selection import train_test_split

    if len(rows) < 2:  # nothing to hold back: trained on, the gate then judges on the holdout only
        return pd.Series(RECENT_TRAIN, index=rows.index, dtype=object)
    counts = rows[target].value_counts()
    n_hold = max(1, min(len(rows) - 1, round(holdout_fraction * len(rows))))
    stratify = rows[target] if classification and counts.min() >= 2 and n_hold >= len(counts) \
        and len(rows) - n_hold >= len(counts) else None
    _, held = train_test_split(rows, test_size=n_hold, random_state=seed, stratify=stratify)
    return pd.Series(np.where(rows.index.isin(held.index), RECENT_HOLDOUT, RECENT_TRAIN), index=rows.index)
