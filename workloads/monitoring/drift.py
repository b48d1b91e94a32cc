"""Drift math: a window of current data compared against a reference profile (profile.py).

`compare(profile, current)` costs, per numeric column, one sort of the current values plus
work proportional to a few thousand grid points:

- KS: the exact two-sample statistic of `scipy.stats.ks_2samp` (same float arithmetic,
  `A/n1 - B/n2`), found without evaluating the ECDFs at all 2n points. The real line is cut
  at a grid of reference order statistics; on each cell the ECDF difference is bounded by its
  values at the cell's ends, and only the cells whose bound reaches the best value seen at
  the grid points are evaluated exactly. The p-value follows scipy's `method="auto"`: exact
  distribution up to 10,000 rows per sample, else Smirnov's asymptotic `kstwo.sf(D, round(en))`,
  and above an effective size en = n1*n2/(n1+n2) of 100,000 its Kolmogorov limit (< 1% apart).
- Chi-square: `scipy.stats.chi2_contingency` on the 2 x K table of reference vs current counts
  (K = reference categories plus unseen ones), so statistic and p-value are scipy's.
- PSI: bins fixed on the reference (deciles, right-closed, open-ended), proportions floored at
  `PSI_EPSILON` so empty bins give a large but finite value.

The current data is a DataFrame, or a `Current` built from capture summaries (window.py): per
column exact counts on the PSI bins and categories (so PSI, chi-square and null rates are those
of the full window) and, for a large window, a uniform sample of the numeric values. KS is then
the statistic against that sample, reported with its error bound: by the DKW inequality (Massart's
constant), P(sup |F_n - F| > eps) <= 2 exp(-2 n eps^2), so with n sampled values the window's
true KS distance is within `ks_error` = sqrt(ln(2 / 0.05) / (2 n)) of it with 95% confidence
(0.0061 for 50,000). The p-value is evaluated at the window's true sizes and at the statistic
minus that bound: an upper bound on the full-window p-value with the same confidence.

Columns are spread over threads: numpy's sort and searchsorted release the GIL.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy import stats

from workloads.monitoring.profile import (
    PREDICTION,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    category_counts,
    floats,
)

PSI_EPSILON = 1e-4  # floor for empty-bin proportions (a common convention; keeps PSI finite)
KS_EXACT_MAX_N = 10_000  # scipy's ks_2samp(method="auto") switches to the asymptotic p-value above this
KS_LIMIT_EN = 100_000  # above this effective size, the Kolmogorov limit distribution (see ks_pvalue)
GRID_CELLS = 4096  # reference order statistics used to bound the ECDF difference
KS_CONFIDENCE = 0.95  # of the stated error bound of a KS statistic from a sample


class DriftThresholds(BaseModel):
    """When one feature counts as drifted.

    A statistical test alone flags negligible shifts on large windows, so a feature drifts when
    the test is significant AND the effect is material (KS distance, or Cramér's V for
    categories), or when its PSI or its null rate moved past a threshold on their own.
    """

    alpha: float = 0.01
    min_effect: float = 0.1
    psi_threshold: float = 0.2
    null_rate_change: float = 0.1


# --- the report ----------------------------------------------------------------------------


class FeatureDrift(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    test: Literal["ks", "chi2"]
    n_reference: int
    n_current: int  # non-null current values
    statistic: float | None  # KS distance or chi-square statistic; None when a side has no values
    p_value: float | None
    effect: float | None  # KS distance, or Cramér's V
    psi: float | None
    null_rate_reference: float
    null_rate_current: float
    unseen_categories: list[str] = []
    unseen_share: float = 0.0  # share of current non-null values in categories the reference lacks
    drifted: bool
    reasons: list[str] = []
    exact: bool = True  # False: KS from a uniform sample of `sample_size` values, within `ks_error` (95%)
    sample_size: int | None = None
    ks_error: float | None = None


class DriftReport(BaseModel):
    n_reference: int
    n_current: int
    features: list[FeatureDrift]
    n_drifted: int
    drift_share: float
    max_psi: float
    prediction: FeatureDrift | None = None
    exact: bool = True  # False: KS statistics from the window's sample (see FeatureDrift.ks_error)

    def most_drifted(self, k: int = 5) -> list[FeatureDrift]:
        return sorted(self.features, key=lambda f: (f.drifted, f.psi or 0.0, f.effect or 0.0), reverse=True)[:k]


# --- the current data --------------------------------------------------------------------------


@dataclass
class NumericCurrent:
    nulls: int
    values: np.ndarray  # sorted non-null values: all of them (exact) or a uniform sample
    counts: np.ndarray | None = None  # counts on the profile's PSI bins; None: from `values`
    present: int | None = None  # non-null values in the window, when `values` is a sample

    @property
    def exact(self) -> bool:
        return self.present is None


@dataclass
class CategoricalCurrent:
    nulls: int
    counts: pd.Series  # non-null values per category (text), reference and unseen ones


@dataclass
class Current:
    """The current window as drift needs it, column by column (window.py builds it from summaries)."""

    rows: int
    columns: dict[str, NumericCurrent | CategoricalCurrent]


def observe(profile: NumericProfile | CategoricalProfile, series: pd.Series) -> NumericCurrent | CategoricalCurrent:
    """One DataFrame column, exactly."""
    if isinstance(profile, CategoricalProfile):
        return CategoricalCurrent(int(series.isna().sum()), category_counts(series))
    values = floats(series)
    nan = np.isnan(values)
    cur = values[~nan] if nan.any() else values.copy()  # a private copy, sorted in place
    cur.sort()
    return NumericCurrent(len(values) - len(cur), cur)


# --- comparing -----------------------------------------------------------------------------


def compare(
    profile: ReferenceProfile, current: pd.DataFrame | Current, *, thresholds: DriftThresholds | None = None,
    prediction_profile: ReferenceProfile | None = None, max_workers: int | None = None,
) -> DriftReport:
    """Per-feature drift of `current` against the reference `profile` (its columns must be present)."""
    thresholds = thresholds or DriftThresholds()
    names = current.columns
    missing = [c for c in profile.columns if c not in names]
    if missing:
        raise KeyError(f"current data lacks reference columns: {', '.join(missing)}")
    n = current.rows if isinstance(current, Current) else len(current)
    jobs: list[tuple[str, NumericProfile | CategoricalProfile]] = [*profile.numeric.items(), *profile.categorical.items()]
    if prediction_profile is not None and PREDICTION in names and PREDICTION in prediction_profile.numeric:
        jobs.append((PREDICTION, prediction_profile.numeric[PREDICTION]))

    def one(job: tuple[str, NumericProfile | CategoricalProfile]) -> FeatureDrift:
        name, p = job
        column = current.columns[name] if isinstance(current, Current) else observe(p, current[name])
        if isinstance(p, NumericProfile) and isinstance(column, NumericCurrent):
            return _numeric_drift(name, p, column, n, thresholds)
        assert isinstance(p, CategoricalProfile) and isinstance(column, CategoricalCurrent)
        return _categorical_drift(name, p, column, n, thresholds)

    # Largest columns first would not matter here: all columns have the same length.
    with ThreadPoolExecutor(max_workers or os.cpu_count()) as pool:
        results = list(pool.map(one, jobs))
    prediction = results.pop() if len(results) > len(profile.columns) else None
    n_drifted = sum(f.drifted for f in results)
    return DriftReport(
        n_reference=profile.n_rows, n_current=n, features=results, n_drifted=n_drifted,
        drift_share=n_drifted / len(results) if results else 0.0,
        max_psi=max((f.psi for f in results if f.psi is not None), default=0.0),
        prediction=prediction, exact=all(f.exact for f in [*results, *([prediction] if prediction else [])]),
    )


def _numeric_drift(name: str, p: NumericProfile, c: NumericCurrent, n: int, t: DriftThresholds) -> FeatureDrift:
    ref, cur = p.sorted_values, c.values
    present = len(cur) if c.present is None else c.present
    statistic = p_value = psi_value = error = None
    if present and len(ref):
        psi_value = psi(_bin_counts(ref, p.edges), _bin_counts(cur, p.edges) if c.counts is None else c.counts)
    if len(cur) and len(ref):
        statistic = ks_statistic(ref, cur)
        if c.exact:
            p_value = ks_pvalue(statistic, ref, cur)
        else:
            error = dkw_epsilon(len(cur))
            p_value = asymptotic_pvalue(max(statistic - error, 0.0), len(ref), present)
    null_cur = 1.0 - present / n if n else 0.0
    reasons = _reasons(statistic, p_value, statistic, psi_value, p.null_rate, null_cur, t)
    return FeatureDrift(
        name=name, kind="numeric", test="ks", n_reference=len(ref), n_current=present,
        statistic=statistic, p_value=p_value, effect=statistic, psi=psi_value,
        null_rate_reference=p.null_rate, null_rate_current=null_cur, drifted=bool(reasons), reasons=reasons,
        exact=c.exact, sample_size=None if c.exact else len(cur), ks_error=error,
    )


def _categorical_drift(
    name: str, p: CategoricalProfile, c: CategoricalCurrent, n: int, t: DriftThresholds,
) -> FeatureDrift:
    counts = c.counts
    cur_counts = counts.reindex(p.categories, fill_value=0).to_numpy(dtype=np.int64)
    unseen = counts[~counts.index.isin(p.categories)]
    n_cur = int(counts.sum())
    statistic = p_value = effect = psi_value = None
    if n_cur and p.counts.sum():
        table = np.array([
            np.concatenate([p.counts, np.zeros(len(unseen), np.int64)]),
            np.concatenate([cur_counts, unseen.to_numpy(dtype=np.int64)]),
        ])
        if table.shape[1] > 1:
            chi2 = stats.chi2_contingency(table)
            statistic, p_value = float(chi2.statistic), float(chi2.pvalue)
        else:  # one category on both sides: nothing can differ
            statistic, p_value = 0.0, 1.0
        effect = math.sqrt(statistic / table.sum())  # Cramér's V for a 2 x K table
        # PSI over the reference categories plus one bucket for everything unseen
        psi_value = psi(np.append(p.counts, 0), np.append(cur_counts, unseen.sum()))
    null_cur = c.nulls / n if n else 0.0
    reasons = _reasons(statistic, p_value, effect, psi_value, p.null_rate, null_cur, t)
    return FeatureDrift(
        name=name, kind="categorical", test="chi2", n_reference=int(p.counts.sum()), n_current=n_cur,
        statistic=statistic, p_value=p_value, effect=effect, psi=psi_value,
        null_rate_reference=p.null_rate, null_rate_current=null_cur,
        unseen_categories=[str(c) for c in unseen.index], unseen_share=float(unseen.sum() / n_cur) if n_cur else 0.0,
        drifted=bool(reasons), reasons=reasons,
    )


def _reasons(
    statistic: float | None, p_value: float | None, effect: float | None, psi_value: float | None,
    null_ref: float, null_cur: float, t: DriftThresholds,
) -> list[str]:
    reasons = []
    if p_value is not None and effect is not None and p_value < t.alpha and effect >= t.min_effect:
        reasons.append(f"test p={p_value:.2g} < {t.alpha} with effect {effect:.3f} >= {t.min_effect}")
    if psi_value is not None and psi_value >= t.psi_threshold:
        reasons.append(f"PSI {psi_value:.3f} >= {t.psi_threshold}")
    if abs(null_cur - null_ref) >= t.null_rate_change:
        reasons.append(f"null rate {null_ref:.3f} -> {null_cur:.3f}")
    return reasons


# --- the statistics ------------------------------------------------------------------------


def psi(reference_counts: np.ndarray, current_counts: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index, sum((c - r) * ln(c / r)) over bins of proportions."""
    r = np.maximum(np.asarray(reference_counts, float) / max(np.sum(reference_counts), 1), epsilon)
    c = np.maximum(np.asarray(current_counts, float) / max(np.sum(current_counts), 1), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(ref: np.ndarray, cur: np.ndarray, cells: int = GRID_CELLS) -> float:
    """max |F_ref - F_cur| over the pooled sample, exactly as scipy.stats.ks_2samp; both inputs sorted.

    Exact because only cells that cannot hold the maximum are skipped: on the cell [g_j, g_j+1)
    between two grid values, A (reference count <= x) and B (current count <= x) are monotone,
    so A/n1 - B/n2 is bounded by the counts at the cell's ends.
    """
    n1, n2 = len(ref), len(cur)
    step = max(1, n1 // cells)
    grid = ref[::step]
    # counts at each grid value (<=) and just below it (<)
    a_le, a_lt = np.searchsorted(ref, grid, "right"), np.searchsorted(ref, grid, "left")
    b_le, b_lt = np.searchsorted(cur, grid, "right"), np.searchsorted(cur, grid, "left")
    best = float(np.max(np.abs(a_le / n1 - b_le / n2)))  # exact values at data points (the grid)
    # below the smallest reference value A = 0: the largest current value there gives B(g0-)/n2
    best = max(best, b_lt[0] / n2)
    # cell j spans [grid[j], grid[j+1]) with grid[last+1] = +inf (A -> n1, B -> n2 just below it)
    a_next = np.append(a_lt[1:], n1)
    b_next = np.append(b_lt[1:], n2)
    upper = np.maximum(a_next / n1 - b_le / n2, b_next / n2 - a_le / n1)
    candidates = np.flatnonzero(upper >= best - 1e-12)
    if len(candidates) == 0:
        return best
    # every data point inside the candidate cells: reference slices and current slices
    ref_points = _ranges(ref, a_lt[candidates], a_next[candidates])
    cur_points = _ranges(cur, b_lt[candidates], b_next[candidates])
    points = np.concatenate([ref_points, cur_points])
    if len(points):
        a = np.searchsorted(ref, points, "right")
        b = np.searchsorted(cur, points, "right")
        best = max(best, float(np.max(np.abs(a / n1 - b / n2))))
    return best


def ks_pvalue(statistic: float, ref: np.ndarray, cur: np.ndarray) -> float:
    """Two-sided p-value as scipy's ks_2samp(method='auto') computes it."""
    n1, n2 = len(ref), len(cur)
    if max(n1, n2) <= KS_EXACT_MAX_N:
        # small samples: scipy's exact distribution (cheap at this size, and identical by construction)
        return float(stats.ks_2samp(ref, cur, method="auto").pvalue)
    return asymptotic_pvalue(statistic, n1, n2)


def asymptotic_pvalue(statistic: float, n1: int, n2: int) -> float:
    """scipy's ks_2samp p-value for samples above KS_EXACT_MAX_N (needs only their sizes)."""
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    if en > KS_LIMIT_EN:
        # scipy's kstwo.sf takes up to 1.2 s per call at en ~ 500,000 (measured here); the
        # Kolmogorov limit it converges to differs by < 1% relative (0.7% worst, measured).
        return float(np.clip(stats.kstwobign.sf(math.sqrt(en) * statistic), 0, 1))
    return float(np.clip(stats.kstwo.sf(statistic, np.round(en)), 0, 1))


def dkw_epsilon(n: int, confidence: float = KS_CONFIDENCE) -> float:
    """eps with P(sup |F_n - F| > eps) <= 1 - confidence for n sampled values (DKW, Massart's constant)."""
    return math.sqrt(math.log(2 / (1 - confidence)) / (2 * n))


def _ranges(values: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """values[starts[0]:stops[0]] ++ values[starts[1]:stops[1]] ++ ..., vectorised."""
    lengths = np.maximum(stops - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return values[offsets + np.arange(total)]


def _bin_counts(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    cuts = np.searchsorted(sorted_values, edges, "right")
    return np.diff(np.concatenate([[0], cuts, [len(sorted_values)]]))
