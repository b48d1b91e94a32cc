"""Datasets: schema inference and validation, content digest, ingest, storage, split."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads.data import dataset as data
from workloads.data.sample import generate
from workloads.data.schema import DatasetSchema, DataValidationError, check, validate
from workloads.environment import Environment


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return generate(800, 0)


@pytest.fixture(scope="module")
def schema(sample: pd.DataFrame) -> DatasetSchema:
    return DatasetSchema.infer(sample)


def test_inferred_schema_accepts_its_own_data_and_fresh_data(sample: pd.DataFrame, schema: DatasetSchema) -> None:
    assert validate(sample, schema) == []
    assert validate(generate(800, 1), schema) == []
    assert schema.columns["contract"].categories == ["month-to-month", "one-year", "two-year"]
    assert schema.columns["tenure_months"].kind == "integer"
    assert schema.columns["tenure_months"].min == 0.0  # never negative: slack stops at zero
    assert 0 < schema.columns["age"].max_null_rate <= 0.1
    assert schema.columns["customer_id"].categories is None  # too many values to be a category


def test_every_violation_is_reported_at_once(sample: pd.DataFrame, schema: DatasetSchema) -> None:
    bad = sample.drop(columns=["age"])
    bad["support_calls"] = bad["support_calls"].astype(str)
    bad.loc[: len(bad) // 2, "total_charges"] = np.nan
    bad.loc[3, "region"] = "atlantis"
    bad.loc[4, "monthly_charges"] = 10_000.0
    found = {(v.column, v.check) for v in validate(bad, schema)}
    assert found == {
        ("age", "missing_column"),
        ("support_calls", "wrong_dtype"),
        ("total_charges", "null_rate"),
        ("region", "unseen_category"),
        ("monthly_charges", "out_of_range"),
    }
    with pytest.raises(DataValidationError) as info:
        check(bad, schema, "churn")
    report = str(info.value)
    assert "5 violation(s)" in report
    for word in ("age", "missing", "atlantis", "10000", "support_calls", "expected integer"):
        assert word in report


def test_integers_read_back_as_floats_with_missing_values_are_accepted(schema: DatasetSchema) -> None:
    df = generate(200, 2)
    df["num_products"] = df["num_products"].astype("float64")
    assert validate(df, schema) == []
    df.loc[0, "num_products"] = 2.5
    assert [v.check for v in validate(df, schema)] == ["wrong_dtype"]


def test_schema_round_trips_and_rejects_unknown_keys(schema: DatasetSchema) -> None:
    assert DatasetSchema.model_validate_json(schema.model_dump_json()) == schema
    with pytest.raises(ValueError, match="maximum"):
        DatasetSchema.model_validate({"columns": {"a": {"kind": "float", "maximum": 3}}})


def test_digest_is_content_only(sample: pd.DataFrame, tmp_path: Path) -> None:
    digest = data.digest(sample)
    assert len(digest) == data.DIGEST_CHARS
    assert data.digest(sample.copy()) == digest
    assert data.digest(sample[list(reversed(sample.columns))]) == digest
    sample.to_csv(tmp_path / "d.csv", index=False)
    sample.to_parquet(tmp_path / "d.parquet", index=False)
    assert data.digest(data.load(str(tmp_path / "d.csv"))) == digest
    assert data.digest(data.load(str(tmp_path / "d.parquet"))) == digest
    changed = sample.copy()
    changed.loc[7, "monthly_charges"] += 0.01
    assert data.digest(changed) != digest
    assert data.digest(sample.iloc[::-1]) != digest  # row order is content too


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)), min_size=1, max_size=30))
def test_digest_distinguishes_missing_values_from_numbers(values: list[float | None]) -> None:
    df = pd.DataFrame({"x": pd.Series(values, dtype="float64")})
    filled = df.fillna(0.0)
    assert (data.digest(df) == data.digest(filled)) == bool(df["x"].notna().all())


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no such file"):
        data.load(str(tmp_path / "missing.csv"))
    with pytest.raises(data.DataError, match="unknown format"):
        data.load(str(tmp_path / "data.json"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(data.DataError, match="could not read as parquet"):
        data.load(str(tmp_path / "broken.parquet"))


def test_split_is_seeded_and_stratified(sample: pd.DataFrame) -> None:
    train, holdout = data.split(sample, "churned", classification=True, seed=3, holdout_fraction=0.25)
    again, holdout_again = data.split(sample, "churned", classification=True, seed=3, holdout_fraction=0.25)
    pd.testing.assert_frame_equal(holdout, holdout_again)
    assert len(holdout) == 200 and len(train) == 600
    assert holdout["churned"].mean() == pytest.approx(sample["churned"].mean(), abs=0.01)
    _, other = data.split(sample, "churned", classification=True, seed=4, holdout_fraction=0.25)
    assert not other.index.equals(holdout.index)


@pytest.mark.servers
def test_store_once_and_load_from_s3(local_env: Environment, sample: pd.DataFrame) -> None:
    name, bucket = f"test-store-{uuid.uuid4().hex[:8]}", local_env.outputs.data_bucket
    first = data.store(sample, name, local_env)
    second = data.store(sample.copy(), name, local_env)
    assert first.uploaded and not second.uploaded
    assert first.uri == second.uri == f"s3://{bucket}/datasets/{name}/{first.digest}/data.parquet"
    listed = local_env.s3.list_objects_v2(Bucket=bucket, Prefix=f"datasets/{name}/")
    assert [o["Key"] for o in listed["Contents"]] == [f"datasets/{name}/{first.digest}/data.parquet"]
    back = data.load(first.uri, local_env)
    assert data.digest(back) == first.digest
    assert data.load_schema(name, local_env) is None
    data.save_schema(name, DatasetSchema.infer(sample), local_env)
    assert data.load_schema(name, local_env) == DatasetSchema.infer(sample)
    with pytest.raises(data.DataError, match="no such object"):
        data.load(f"s3://{bucket}/datasets/{name}/nothing.csv", local_env)


def test_reading_or_writing_s3_without_an_environment_is_refused(sample: pd.DataFrame) -> None:
    with pytest.raises(data.DataError, match="needs an environment"):
        data.load("s3://bucket/churn.parquet")
    with pytest.raises(data.DataError, match="needs an environment"):
        data.write(sample, "s3://bucket/churn.parquet")


@pytest.mark.servers
def test_write_then_load_round_trips_through_s3_and_files(
    local_env: Environment, sample: pd.DataFrame, tmp_path: Path
) -> None:
    digest = data.digest(sample)
    for where in (f"s3://{local_env.outputs.data_bucket}/incoming/rt-{uuid.uuid4().hex[:8]}.csv",
                  str(tmp_path / "nested" / "rt.parquet")):
        assert data.write(sample, where, local_env) == where
        assert data.digest(data.load(where, local_env)) == digest
