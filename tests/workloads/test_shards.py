"""The search across pods: shards partition the candidates, select registers the best of the union.

Real local stack (moto S3 + mlflow server), tiny data: no mocks.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from scipy import stats
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold
from typer.testing import CliRunner

from workloads.cli import app
from workloads.data import dataset as datasets
from workloads.data.sample import generate
from workloads.environment import Environment, StackOutputs
from workloads.training.errors import SpecError
from workloads.training.job import search_shard
from workloads.training.metrics import METRICS
from workloads.training.models import build_pipeline, make_estimator
from workloads.training.report import ShardResult, TrainResult
from workloads.training.search import evaluate, plan_candidates, run_search, shard_candidates
from workloads.training.shards import GROUP_TAG, SHARD_TAG, finished_shards
from workloads.training.spec import TrainingSpec, format_uri

OUTPUTS = StackOutputs(environment="dev", tracking_uri="http://mlflow:5000", data_bucket="dev-data",
                       artifact_bucket="dev-artifacts", capture_bucket="dev-capture")


def spec_for(name: str, source: str | None = None) -> TrainingSpec:
    """Five candidates: a 3-point grid and 2 random draws (a space larger than n_iter)."""
    return TrainingSpec.parse({
        "name": name,
        "dataset": {"name": name, **({"source": source} if source else {})},
        "target": "churned",
        "exclude": ["customer_id"],
        "metric": "roc_auc",
        "models": [
            {"family": "logistic_regression", "search_space": {"C": [0.01, 0.3, 3.0]}},
            {"family": "hist_gradient_boosting",
             "search_space": {"max_iter": [15], "learning_rate": {"loguniform": [0.03, 0.3]}, "max_depth": [2, 3]}},
        ],
        "search": {"n_iter": 3, "cv": 2},
        "promotion": {"floor": 0.5},
        "seed": 3,
    })


# --- no server ------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_shards_partition_the_candidates_without_overlap_or_gap(shards: int) -> None:
    planned = plan_candidates(spec_for("x"), "classification")
    assert len(planned) == 6 and [p.index for p in planned] == list(range(6))
    parts = [shard_candidates(planned, i, shards) for i in range(shards)]
    indices = sorted(p.index for part in parts for p in part)
    assert indices == list(range(len(planned)))  # each exactly once
    assert all(len(part) in (len(planned) // shards, len(planned) // shards + 1) for part in parts)


def test_shard_index_out_of_range_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="--shard 2: must be in 0..1"):
        shard_candidates(plan_candidates(spec_for("x"), "classification"), 2, 2)


def test_sharded_evaluation_equals_the_unsharded_search_and_sklearns_own() -> None:
    spec = spec_for("x")
    df = generate(240, 5)
    prep = prepare_offline(spec, df)
    metric = METRICS["roc_auc"]
    whole = run_search(spec, "classification", metric, 2, prep["X"], prep["y"])
    planned = plan_candidates(spec, "classification")
    union = [c for i in range(2) for c in evaluate(
        spec, "classification", metric, 2, prep["X"], prep["y"], shard_candidates(planned, i, 2))]
    def scores(candidates: list) -> list[tuple]:  # fit times differ run to run
        return sorted((c.index, c.family, c.params, c.cv_score, c.cv_std) for c in candidates)

    assert scores(union) == scores(whole)
    # what RandomizedSearchCV itself draws and scores for the random family (same seed, same folds)
    model = spec.models[1]
    search = RandomizedSearchCV(
        build_pipeline(prep["X"], make_estimator(model.family, "classification", spec.seed)),
        {"model__max_iter": [15], "model__max_depth": [2, 3],
         "model__learning_rate": stats.loguniform(0.03, 0.3)},
        n_iter=3, random_state=spec.seed, scoring="roc_auc", refit=False,
        cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=spec.seed),
    ).fit(prep["X"], prep["y"])
    ours = sorted((c for c in whole if c.family == model.family), key=lambda c: c.index)
    assert [c.params for c in ours] == [
        {k.removeprefix("model__"): v for k, v in p.items()} for p in search.cv_results_["params"]]
    assert [c.cv_score for c in ours] == pytest.approx(list(search.cv_results_["mean_test_score"]))


def prepare_offline(spec: TrainingSpec, df: Any) -> dict[str, Any]:
    train_df, _ = datasets.split(df, "churned", classification=True, seed=spec.seed)
    features = [c for c in df.columns if c not in ("churned", "customer_id")]
    return {"X": train_df[features], "y": train_df["churned"]}


def test_stack_placeholders_resolve_and_unknown_ones_are_named() -> None:
    spec = spec_for("x", "s3://{data_bucket}/incoming/{environment}.parquet")
    assert format_uri(spec.dataset.source, OUTPUTS) == "s3://dev-data/incoming/dev.parquet"
    with pytest.raises(SpecError, match=r"dataset\.source.*unknown placeholder \{data_buckt\}.*\{data_bucket\}"):
        spec_for("x", "s3://{data_buckt}/incoming/x.parquet")
    with pytest.raises(SpecError, match=r"unknown placeholder \{data_bucket\.name\}"):
        spec_for("x", "s3://{data_bucket.name}/x.parquet")
    with pytest.raises(SpecError, match=r"kms_key_arn.*not set in environment 'dev'"):
        format_uri("s3://b/{kms_key_arn}.csv", OUTPUTS)
    with pytest.raises(SpecError, match="Single '}'"):
        format_uri("s3://b/x}.csv", OUTPUTS)


def test_the_shipped_specs_read_their_data_from_the_stacks_bucket() -> None:
    for path in sorted((Path(__file__).parents[2] / "workloads" / "specs").glob("*.yaml")):
        spec = TrainingSpec.from_yaml(path)
        assert format_uri(spec.dataset.source, OUTPUTS).startswith("s3://dev-data/incoming/"), path


def test_shard_and_select_options_are_checked() -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["train", "workloads/specs/churn.yaml", "--shard", "0", "--shards", "2", "--select"])
    assert both.exit_code == 2 and "choose one" in " ".join(both.output.split())
    beyond = runner.invoke(app, ["train", "workloads/specs/churn.yaml", "--shard", "2", "--shards", "2"])
    assert beyond.exit_code == 2 and "must be below --shards 2" in " ".join(beyond.output.split())


# --- on the local stack ---------------------------------------------------------------------

@pytest.mark.servers
def test_two_shards_then_select_register_the_best_candidate_of_the_union(
    local_env: Environment, local_workdir: Path, tmp_path: Path
) -> None:
    name = f"churn-shards-{uuid.uuid4().hex[:8]}"
    source = f"s3://{{data_bucket}}/incoming/{name}.parquet"
    runner = CliRunner()
    seeded = runner.invoke(app, ["data", "generate", source, "--rows", "300", "--seed", "4",
                                 "--workdir", str(local_workdir)])
    assert seeded.exit_code == 0, seeded.output
    assert f"s3://{local_env.outputs.data_bucket}/incoming/{name}.parquet" in seeded.output
    spec = spec_for(name, source)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))

    first = runner.invoke(app, ["train", str(spec_path), "--shard", "0", "--shards", "2", "--json",
                                "--workdir", str(local_workdir)])
    assert first.exit_code == 0, first.output
    shard0 = ShardResult.model_validate_json(first.stdout)
    shard1 = search_shard(spec, local_env, 1, 2, progress=False)
    rerun = search_shard(spec, local_env, 1, 2, progress=False)  # a retried pod: same results, newer run
    assert shard0.group == shard1.group == rerun.group
    assert (shard0.n_candidates, shard1.n_candidates) == (3, 3)
    client = local_env.mlflow_client()
    assert client.search_model_versions(f"name='{name}'") == []  # shards register nothing

    experiment = client.get_experiment_by_name(name)
    finished, missing = finished_shards(client, experiment.experiment_id, shard0.group, 2)
    assert missing == {} and finished[1].info.run_id == rerun.run_id
    assert len(finished[1].data.tags["mlops.git.commit"]) == 40  # search runs carry the code's lineage too
    children = client.search_runs([experiment.experiment_id], f"tags.`{GROUP_TAG}` = '{shard0.group}' and "
                                  f"tags.`{SHARD_TAG}` = '0' and tags.mlflow.parentRunId = '{shard0.run_id}'")
    assert sorted(int(c.data.tags["mlops.candidate.index"]) for c in children) == [0, 2, 4]

    selected = runner.invoke(app, ["train", str(spec_path), "--select", "--shards", "2", "--json",
                                   "--wait-timeout", "5", "--workdir", str(local_workdir)])
    assert selected.exit_code == 0, selected.output
    result = TrainResult.model_validate_json(selected.stdout)
    best = max([shard0.best, shard1.best], key=lambda c: (c.cv_score, -c.index))
    assert result.decision == "champion" and result.n_candidates == 6
    assert (result.best_family, result.best_params) == (best.family, best.params)
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.version == result.version and mv.tags["mlops.dataset.digest"] == shard0.dataset_digest
    assert client.get_run(result.run_id).data.tags[GROUP_TAG] == shard0.group


@pytest.mark.servers
def test_select_with_a_missing_shard_fails_clearly_and_registers_nothing(
    local_env: Environment, local_workdir: Path, tmp_path: Path
) -> None:
    name = f"churn-missing-{uuid.uuid4().hex[:8]}"
    data_path = tmp_path / "churn.parquet"
    generate(200, 8).to_parquet(data_path, index=False)
    spec = spec_for(name, str(data_path))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
    search_shard(spec, local_env, 0, 3, progress=False)
    result = CliRunner().invoke(app, ["train", str(spec_path), "--select", "--shards", "3", "--wait-timeout", "0",
                                      "--workdir", str(local_workdir)])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "2 of 3 shard(s) have no finished run" in output and "1 (no run), 2 (no run)" in output
    assert local_env.mlflow_client().search_model_versions(f"name='{name}'") == []
