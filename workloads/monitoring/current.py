"""The window's drift input (`drift.Current`), exact when the window is small, from summaries when not.

- Up to `exact_rows` rows: every file is read in bounded batches; per numeric column all values
  are kept (8 bytes a row) and sorted, so KS, PSI, chi-square and null rates are exactly those of
  the window as one DataFrame.
- Above: the summaries counted on the champion's bins are merged (summaries.py): bin counts,
  category counts and nulls exactly, numeric values from the window's uniform sample (KS with
  its DKW bound, drift.py). Files without such a summary (written before the monitor cached the
  bins, by another model version, or across the window's start) are read in bounded batches into
  the same merge. Time and memory then depend on the number of files and the sample size, not
  on the rows captured; each past hour merged here is written back as one roll-up (rollups.py),
  so the next run reads one object for it instead of its files.

Either way a uniform sample of rows (`window.sample`) is kept for the report's plots.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from workloads.capture.summary import Bins, Summary, numeric_values
from workloads.monitoring import rollups
from workloads.monitoring.drift import CategoricalCurrent, Current, NumericCurrent
from workloads.monitoring.profile import (
    PREDICTION,
    ReferenceProfile,
    bins_document,
    feature_profile_key,
    prediction_profile_key,
)
from workloads.monitoring.summaries import Merger, Sampler, merge_tails, usable
from workloads.monitoring.window import CapturedWindow, Part

OTHER_UNSEEN = "(other unseen values)"  # the category counting unseen values beyond the first MAX_UNSEEN
UNSEEN = "(unseen)"  # what the report's sample shows for a category the reference lacks


def champion_bins(champion: Any, profile: ReferenceProfile, prediction_profile: ReferenceProfile | None) -> Bins:
    """The champion's bins, through the same document capture reads (so edges are the same floats)."""
    digest = champion.dataset_digest
    key = feature_profile_key(digest, champion.features)
    prediction = None
    if prediction_profile is not None and PREDICTION in prediction_profile.numeric:
        prediction_key = prediction_profile_key(digest, champion.name, champion.version)
        prediction = json.loads(bins_document(prediction_profile, prediction_key))
    return Bins.from_documents(json.loads(bins_document(profile, key)), prediction)


def window_current(window: CapturedWindow, champion: Any, profile: ReferenceProfile,
                   prediction_profile: ReferenceProfile | None, exact_rows: int) -> Current:
    bins = champion_bins(champion, profile, prediction_profile)
    rows = len(window)
    if rows <= exact_rows:
        merger, values = _exact(window, bins, rows)
    else:
        merger, values = _merged(window, bins), {}
    sample = merger.sample()
    window.sample = _sample_frame(sample, bins)
    total = merger.total or Summary.of_table(_empty(bins), bins)
    columns: dict[str, NumericCurrent | CategoricalCurrent] = {}
    for i, name in enumerate(bins.columns, start=1):
        if name in bins.numeric:
            nulls = total.nulls[name]
            if name in values:
                columns[name] = NumericCurrent(nulls, values[name])
            else:
                drawn = sample[:, i] if len(sample) else np.empty(0)
                columns[name] = NumericCurrent(nulls, np.sort(drawn[~np.isnan(drawn)]), total.bins[name],
                                               present=total.rows - nulls)
        else:
            columns[name] = _categories(total, name, bins.categorical[name])
    return Current(total.rows, columns)


def _exact(window: CapturedWindow, bins: Bins, rows: int) -> tuple[Merger, dict[str, np.ndarray]]:
    """Every file read in batches: counts, every numeric value (sorted), and a sample for the plots."""
    sampler = Sampler()
    sampler.count(rows)
    merger = Merger(sampler)
    values: dict[str, list[np.ndarray]] = {name: [] for name in bins.numeric}
    for part in window.parts:
        for table in _batches(window, part, bins):
            merger.add(Summary.of_table(table, bins, rate=sampler.bound()))
            for name, kept in values.items():
                kept.append(numeric_values(table.column(name)))
    exact = {}
    for name, kept in values.items():
        column = np.concatenate(kept) if kept else np.empty(0)
        column = column[~np.isnan(column)]
        column.sort()
        exact[name] = column
    return merger, exact


def _merged(window: CapturedWindow, bins: Bins) -> Merger:
    """The champion's group(s) of summaries, plus every other file of the window read in batches."""
    merger = Merger(window.sampler)
    for part in window.parts:  # first: streaming a file counts nothing new, the bound is final already
        if part.group is None or not usable(window.groups[part.group].total, bins):
            for table in _batches(window, part, bins):
                merger.add(Summary.of_table(table, bins, rate=window.sampler.bound()))
    groups = {k: g for k, g in window.groups.items() if g.total is not None and usable(g.total, bins)}
    for keys, group in groups.items():  # each hour's sample complete below the final bound
        merge_tails(window.s3, window.bucket, window.tails.get(keys, []), group)
    for group in groups.values():
        assert group.total is not None
        merger.add(group.total)
        merger.keep(group.sample())
    rollups.write(window, groups)
    return merger


def _batches(window: CapturedWindow, part: Part, bins: Bins) -> Any:
    return window._readable(part, [*bins.columns, "_ts"])


def _categories(total: Summary, name: str, categories: list[str]) -> CategoricalCurrent:
    counted = total.categories[name]
    counts = pd.Series(counted.counts, index=pd.Index(categories, dtype=object), dtype=np.int64)
    unseen = dict(counted.unseen) | ({OTHER_UNSEEN: counted.other} if counted.other else {})
    if unseen:
        counts = pd.concat([counts, pd.Series(unseen, dtype=np.int64)])
    return CategoricalCurrent(counted.nulls, counts[counts > 0].sort_index())


def _sample_frame(sample: np.ndarray, bins: Bins) -> pd.DataFrame:
    """The sampled rows as a DataFrame: numbers as they are, categories by name."""
    frame = {}
    for i, name in enumerate(bins.columns, start=1):
        column = sample[:, i] if len(sample) else np.empty(0)
        if name in bins.numeric:
            frame[name] = column
        else:
            categories = bins.categorical[name]
            names = np.array([*categories, UNSEEN, None], dtype=object)
            codes = np.where(np.isnan(column), -2, column).astype(np.int64)
            codes[codes == -1], codes[codes == -2] = len(categories), len(categories) + 1
            frame[name] = pd.Series(names[codes], dtype=object)
    return pd.DataFrame(frame)


def _empty(bins: Bins) -> Any:
    import pyarrow as pa

    return pa.table({name: pa.nulls(0) for name in bins.columns})
