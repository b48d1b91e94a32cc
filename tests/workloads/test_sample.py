"""The sample data generator: deterministic, realistic, with real signal and controllable shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from workloads.data.sample import CATEGORIES, NUMERIC, generate


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    pd.testing.assert_frame_equal(generate(300, 4), generate(300, 4))
    assert not generate(300, 4).equals(generate(300, 5))


def test_columns_kinds_missing_values_and_label() -> None:
    df = generate(3000, 0)
    assert set(NUMERIC) | set(CATEGORIES) | {"customer_id", "churned"} == set(df.columns)
    assert df["customer_id"].is_unique
    for name in NUMERIC:
        assert pd.api.types.is_numeric_dtype(df[name]), name
    for name, allowed in CATEGORIES.items():
        assert set(df[name].dropna()) <= set(allowed), name
    assert df[["total_charges", "age", "payment_method"]].isna().any().all()
    assert set(df["churned"].unique()) == {0, 1}
    assert 0.15 < df["churned"].mean() < 0.6


def test_the_label_has_signal() -> None:
    train, test = generate(3000, 1), generate(2000, 2)
    cols = ["tenure_months", "monthly_charges", "support_calls"]
    model = LogisticRegression(max_iter=1000).fit(train[cols], train["churned"])
    assert roc_auc_score(test["churned"], model.predict_proba(test[cols])[:, 1]) > 0.7


def test_covariate_shift_moves_only_the_chosen_features() -> None:
    base = generate(4000, 3)
    shifted = generate(4000, 3, shift=2.0, shift_features=["monthly_charges", "contract"])
    moved = shifted["monthly_charges"].mean() - base["monthly_charges"].mean()
    assert moved == pytest.approx(2.0 * base["monthly_charges"].std(), rel=1e-6)
    # the rarest contract gains a quarter x shift of the rows
    assert (shifted["contract"] == "two-year").mean() > (base["contract"] == "two-year").mean() + 0.3
    pd.testing.assert_series_equal(base["tenure_months"], shifted["tenure_months"])
    pd.testing.assert_series_equal(base["region"], shifted["region"])


def test_default_shift_features_and_integer_columns_stay_integers() -> None:
    shifted = generate(500, 3, shift=1.0)
    assert pd.api.types.is_integer_dtype(shifted["support_calls"])
    assert shifted["support_calls"].mean() > generate(500, 3)["support_calls"].mean() + 0.8


def test_concept_drift_changes_labels_not_features() -> None:
    base, drifted = generate(4000, 6), generate(4000, 6, concept_drift=1.0)
    features = [c for c in base.columns if c != "churned"]
    pd.testing.assert_frame_equal(base[features], drifted[features])
    assert (base["churned"] != drifted["churned"]).mean() > 0.2
    # the old rule no longer predicts the new labels as well
    cols = ["tenure_months", "monthly_charges", "support_calls"]
    model = LogisticRegression(max_iter=1000).fit(generate(3000, 7)[cols], generate(3000, 7)["churned"])
    old_auc = roc_auc_score(base["churned"], model.predict_proba(base[cols])[:, 1])
    new_auc = roc_auc_score(drifted["churned"], model.predict_proba(drifted[cols])[:, 1])
    assert new_auc < old_auc - 0.15


def test_unlabelled_and_regression_variants() -> None:
    assert "churned" not in generate(50, 0, labels=False).columns
    spend = generate(2000, 0, target="monthly_spend")
    assert "churned" not in spend.columns
    assert np.corrcoef(spend["monthly_charges"], spend["monthly_spend"])[0, 1] > 0.7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_rows": 0}, "n_rows"),
        ({"n_rows": 5, "concept_drift": 1.5}, "concept_drift"),
        ({"n_rows": 5, "shift": 1.0, "shift_features": ["nope"]}, "nope"),
        ({"n_rows": 5, "target": "income"}, "target"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


def test_cli_writes_shifted_unlabelled_data(tmp_path) -> None:
    from typer.testing import CliRunner

    from workloads.cli import app

    out = tmp_path / "prod" / "batch.parquet"
    args = ["data", "generate", str(out), "--rows", "300", "--seed", "2", "--shift", "1.5",
            "--shift-features", "monthly_charges", "--no-labels"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(out),
        generate(300, 2, shift=1.5, shift_features=["monthly_charges"], labels=False),
        check_dtype=False,  # parquet may read strings back as another string dtype
    )
    bad = CliRunner().invoke(app, ["data", "generate", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and ".csv or .parquet" in bad.output


def test_writing_to_s3_needs_an_environment() -> None:
    from workloads.data.sample import write_sample
    from workloads.errors import UsageError
    from workloads.settings import GenerateSettings

    with pytest.raises(UsageError, match="needs an environment"):
        write_sample(GenerateSettings(out="s3://{data_bucket}/incoming/churn.parquet", rows=10), None)
