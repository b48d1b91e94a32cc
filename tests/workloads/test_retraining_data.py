"""A retraining Job validates the monitor's data like the in-process retraining does: ranges widen, nothing else."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from workloads.cli import app
from workloads.data.schema import DatasetSchema, DataValidationError, check, widen_ranges


def test_widened_ranges_cover_drifted_values_but_kinds_and_categories_still_hold() -> None:
    reference = pd.DataFrame({"charges": [18.0, 120.0, 158.0] * 40, "contract": ["monthly", "yearly", "monthly"] * 40})
    schema = DatasetSchema.infer(reference)
    drifted = pd.DataFrame({"charges": [18.0, 400.5, 60.0], "contract": ["monthly", "yearly", "yearly"]})
    with pytest.raises(DataValidationError, match="out_of_range"):
        check(drifted, schema, "churn")
    widened, changes = widen_ranges(schema, drifted)
    check(drifted, widened, "churn")
    assert changes == ["charges [0, 400.5]"] and schema.columns["charges"].max == 193.0  # the original is untouched
    unseen = drifted.assign(contract=["monthly", "weekly", "yearly"])
    with pytest.raises(DataValidationError, match="contract"):
        check(unseen, widen_ranges(schema, unseen)[0], "churn")


def test_retraining_needs_the_handed_over_data() -> None:
    refused = CliRunner().invoke(app, ["--check", "train", "/app/specs/churn.yaml", "--retraining"])
    assert refused.exit_code == 2 and "--retraining needs --data" in refused.output
    accepted = CliRunner().invoke(app, ["--check", "train", "spec.yaml", "--data", "s3://b/k.parquet", "--retraining"])
    assert accepted.exit_code == 0 and '"retraining": true' in accepted.output
