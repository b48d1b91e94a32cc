"""Drift math against scipy and hand-worked values; false-positive rate over repeated seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from workloads.data.sample import CATEGORIES, NUMERIC, generate
from workloads.monitoring.drift import DriftThresholds, compare, ks_statistic, psi
from workloads.monitoring.profile import ReferenceProfile

FEATURES = NUMERIC + list(CATEGORIES)


def _pair(rng: np.random.Generator, kind: str, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "continuous":
        return rng.normal(size=n1), rng.normal(rng.normal() * 0.3, 1, size=n2)
    if kind == "ties":  # few distinct values: every point is a tie
        return rng.integers(0, 5, n1).astype(float), rng.integers(0, 6, n2).astype(float)
    return np.round(rng.normal(size=n1), 1), np.round(rng.normal(0.05, 1.2, size=n2), 1)


@pytest.mark.parametrize("kind", ["continuous", "ties", "rounded"])
@pytest.mark.parametrize("sizes", [(1, 1), (7, 300), (1000, 999), (20_000, 15_000), (3, 50_000)])
def test_ks_equals_scipy(kind: str, sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(hash((kind, sizes)) % 2**32)
    for cells in (1, 17, 4096):  # grid coarser and finer than the data
        ref, cur = _pair(rng, kind, *sizes)
        expected = stats.ks_2samp(ref, cur)
        profile = ReferenceProfile.build(pd.DataFrame({"x": ref}))
        got = ks_statistic(profile.numeric["x"].sorted_values, np.sort(cur), cells=cells)
        assert abs(got - expected.statistic) <= 1e-9
    report = compare(profile, pd.DataFrame({"x": cur}))
    assert abs(report.features[0].statistic - expected.statistic) <= 1e-9
    assert report.features[0].p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_ks_drops_nans_like_scipy_after_dropping() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=5000), rng.normal(0.1, 1, size=4000)
    ref[::7], cur[::5] = np.nan, np.nan
    report = compare(ReferenceProfile.build(pd.DataFrame({"x": ref})), pd.DataFrame({"x": cur}))
    expected = stats.ks_2samp(ref[~np.isnan(ref)], cur[~np.isnan(cur)])
    feature = report.features[0]
    assert abs(feature.statistic - expected.statistic) <= 1e-9
    assert feature.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert feature.null_rate_reference == pytest.approx(1 / 7, abs=1e-3)
    assert feature.null_rate_current == pytest.approx(0.2)
    assert feature.n_current == 3200


def test_chi_square_equals_scipy_and_counts_unseen_categories() -> None:
    rng = np.random.default_rng(4)
    ref = pd.Series(rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2]))
    cur = pd.Series(rng.choice(["a", "b", "c", "z"], 1000, p=[0.4, 0.3, 0.2, 0.1]))
    cur[:10] = None
    report = compare(ReferenceProfile.build(pd.DataFrame({"c": ref})), pd.DataFrame({"c": cur}))
    feature = report.features[0]
    table = np.array([
        [(ref == k).sum() for k in ["a", "b", "c", "z"]],
        [(cur == k).sum() for k in ["a", "b", "c", "z"]],
    ])
    expected = stats.chi2_contingency(table)
    assert feature.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert feature.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert feature.unseen_categories == ["z"]
    assert feature.unseen_share == pytest.approx(table[1, 3] / 990)
    assert feature.null_rate_current == pytest.approx(0.01)
    assert feature.drifted


def test_chi_square_two_categories_uses_scipys_yates_correction() -> None:
    ref = pd.Series(["y"] * 60 + ["n"] * 40)
    cur = pd.Series(["y"] * 45 + ["n"] * 55)
    feature = compare(ReferenceProfile.build(pd.DataFrame({"c": ref})), pd.DataFrame({"c": cur})).features[0]
    expected = stats.chi2_contingency([[40, 60], [55, 45]])  # categories sorted: n, y
    assert feature.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert feature.p_value == pytest.approx(expected.pvalue, rel=1e-12)


def test_psi_hand_worked_example() -> None:
    # reference 25% per bin, current 10/20/30/40%:
    # (0.10-0.25)ln(0.10/0.25) + (0.20-0.25)ln(0.20/0.25) + (0.30-0.25)ln(0.30/0.25) + (0.40-0.25)ln(0.40/0.25)
    # = 0.137444 + 0.011157 + 0.009116 + 0.070500 = 0.228217
    assert psi(np.array([25, 25, 25, 25]), np.array([10, 20, 30, 40])) == pytest.approx(0.228217, abs=1e-6)
    # an empty current bin is floored at 1e-4 instead of giving infinity: 0.5*ln(0.5/1e-4)+(0.5-1e-4)*ln(...)
    assert math.isfinite(psi(np.array([50, 50]), np.array([0, 100])))


def test_psi_bins_are_reference_deciles() -> None:
    ref = np.arange(1, 101, dtype=float)  # deciles: (-inf,10], (10,20], ..., (90, inf)
    profile = ReferenceProfile.build(pd.DataFrame({"x": ref}))
    np.testing.assert_array_equal(profile.numeric["x"].edges, np.arange(10, 100, 10, dtype=float))
    # current: 40 values in the first bin, 60 spread over the other nine (6.67% each)
    cur = np.concatenate([np.full(40, 5.0), np.linspace(11, 100, 60)])
    feature = compare(profile, pd.DataFrame({"x": cur})).features[0]
    counts = np.histogram(cur, bins=[-np.inf, *range(10, 100, 10), np.inf])[0]
    by_hand = sum((c / 100 - 0.1) * math.log((c / 100) / 0.1) for c in counts)
    assert feature.psi == pytest.approx(by_hand, rel=1e-12)
    assert feature.drifted


def test_profile_round_trips_through_bytes() -> None:
    df = generate(500, seed=1)[FEATURES]
    profile = ReferenceProfile.build(df, meta={"dataset.digest": "abc"})
    again = ReferenceProfile.from_bytes(profile.to_bytes())
    assert again.meta == {"dataset.digest": "abc"} and again.columns == profile.columns
    current = generate(400, seed=2)[FEATURES]
    assert compare(again, current) == compare(profile, current)


def test_missing_column_is_a_clear_error() -> None:
    profile = ReferenceProfile.build(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    with pytest.raises(KeyError, match="lacks reference columns: b"):
        compare(profile, pd.DataFrame({"a": [1.0]}))


def test_false_positive_rate_is_low_and_shift_is_found() -> None:
    """Two samples of one distribution rarely look drifted; a shifted one always does."""
    thresholds = DriftThresholds()
    reference = generate(5000, seed=100)
    features = FEATURES
    profile = ReferenceProfile.build(reference[features])
    seeds = range(50)
    flagged_features = flagged_windows = 0
    for seed in seeds:
        report = compare(profile, generate(500, seed=seed)[features], thresholds=thresholds)
        flagged_features += report.n_drifted
        flagged_windows += report.drift_share >= 0.3 or report.max_psi >= thresholds.psi_threshold
    feature_fpr = flagged_features / (len(seeds) * len(features))
    window_fpr = flagged_windows / len(seeds)
    print(f"false positives: {feature_fpr:.3%} of features, {window_fpr:.0%} of windows")
    assert feature_fpr <= 0.02
    assert window_fpr <= 0.04

    numeric = [c for c in features if c in profile.numeric]
    shifted = generate(500, seed=999, shift=1.0, shift_features=numeric[:3])[features]
    report = compare(profile, shifted, thresholds=thresholds)
    drifted = {f.name for f in report.features if f.drifted}
    assert set(numeric[:3]) <= drifted
    assert len(drifted - set(numeric[:3])) <= 1
