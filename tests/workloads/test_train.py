"""Training end to end against the real local stack (moto S3 + mlflow server): no mocks."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from workloads.cli import app
from workloads.data.sample import generate
from workloads.data.schema import DataValidationError
from workloads.devstack.stack import LocalStack
from workloads.environment import Environment
from workloads.training import registry
from workloads.training.errors import SpecError
from workloads.training.gate import ChampionScore, decide
from workloads.training.job import train
from workloads.training.lineage import code_tags
from workloads.training.metrics import METRICS
from workloads.training.models import make_estimator
from workloads.training.report import TrainResult
from workloads.training.search import search_space
from workloads.training.spec import DEFAULT_MARGIN, PromotionSpec, TrainingSpec

pytestmark = pytest.mark.servers

FEATURES = [
    "tenure_months", "monthly_charges", "total_charges", "support_calls", "age", "num_products",
    "contract", "payment_method", "region", "internet_service",
]


def churn_spec(name: str, **overrides: Any) -> TrainingSpec:
    """A small, fast spec: three candidates over two families, 2-fold CV."""
    raw: dict[str, Any] = {
        "name": name,
        "dataset": {"name": name},
        "target": "churned",
        "exclude": ["customer_id"],
        "metric": "roc_auc",
        "models": [
            {"family": "logistic_regression", "search_space": {"C": [0.1, 1.0]}},
            {"family": "hist_gradient_boosting", "search_space": {"max_iter": [30], "max_depth": [3]}},
        ],
        "promotion": {"margin": 0.002, "floor": 0.6},
        "search": {"n_iter": 2, "cv": 2},
        "seed": 1,
    }
    raw.update(overrides)
    return TrainingSpec.parse(raw)


def versions(env: Environment, name: str) -> list[str]:
    return sorted(mv.version for mv in env.mlflow_client().search_model_versions(f"name='{name}'"))


def run_count(env: Environment, name: str) -> int:
    client = env.mlflow_client()
    experiment = client.get_experiment_by_name(name)
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


class First:
    def __init__(self, spec: TrainingSpec, df: pd.DataFrame, result: TrainResult):
        self.spec, self.df, self.result = spec, df, result


@pytest.fixture(scope="module")
def first(local_env: Environment) -> First:
    name = f"churn-{uuid.uuid4().hex[:8]}"
    spec, df = churn_spec(name), generate(600, 11)
    return First(spec, df, train(spec, local_env, data=df, progress=False))


def test_first_training_registers_a_champion_with_lineage(first: First, local_env: Environment) -> None:
    result, client = first.result, local_env.mlflow_client()
    assert result.decision == "champion" and result.champion_version_before is None
    assert result.task == "classification" and result.n_candidates == 3
    assert set(result.holdout_metrics) == {"roc_auc", "accuracy", "f1", "average_precision", "log_loss"}
    assert 0.6 < result.metric_value == result.holdout_metrics["roc_auc"] <= 1.0

    mv = client.get_model_version_by_alias(result.model_name, "champion")
    assert mv.version == result.version and mv.run_id == result.run_id
    digest = result.dataset_digest
    assert mv.tags.items() >= {
        "mlops.dataset.name": first.spec.dataset.name,
        "mlops.dataset.digest": digest,
        "mlops.dataset.uri": f"s3://{local_env.outputs.data_bucket}/datasets/{first.spec.dataset.name}/{digest}/data.parquet",
        "mlops.spec.hash": first.spec.spec_hash(),
        "mlops.target": "churned",
        "mlops.task": "classification",
        "mlops.metric": "roc_auc",
        "mlops.decision": "champion",
        "mlops.split.seed": "1",
        "mlops.split.holdout_fraction": "0.2",
    }.items()
    assert float(mv.tags["mlops.metric.value"]) == result.metric_value
    assert len(mv.tags["mlops.git.commit"]) == 40  # the tests run inside the repository
    assert mv.tags["mlops.git.dirty"] in ("true", "false")

    with local_env.tracking():
        info = mlflow.models.get_model_info(f"models:/{result.model_name}/{result.version}")
    assert info.signature.inputs.input_names() == FEATURES
    assert info.saved_input_example_info is not None

    run = client.get_run(result.run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == digest and dataset_input.dataset.name == first.spec.dataset.name
    assert mv.tags["mlops.dataset.uri"] in dataset_input.dataset.source
    assert run.data.metrics["holdout.roc_auc"] == result.metric_value
    assert run.data.params["best.family"] == result.best_family
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"spec.yaml", "schema.json", "permutation_importance.png", "permutation_importance.csv"} <= artifacts
    with local_env.tracking():
        logged_spec = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{result.run_id}/spec.yaml"))
    assert TrainingSpec.parse(logged_spec) == first.spec

    children = client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(children) == 3
    assert {c.data.params["family"] for c in children} == {"logistic_regression", "hist_gradient_boosting"}
    assert all("cv.roc_auc" in c.data.metrics for c in children)

    # the champion is a working model: the same holdout scores give the same metric
    with local_env.tracking():
        model = mlflow.pyfunc.load_model(f"models:/{result.model_name}@champion")
    predictions = model.predict(first.df[FEATURES].head(20))
    assert set(pd.Series(predictions).unique()) <= {0, 1}


def test_retraining_on_the_same_data_stores_it_once_and_reproduces_the_metrics(
    first: First, local_env: Environment
) -> None:
    again = train(first.spec, local_env, data=first.df.copy(), progress=False)
    assert not again.dataset_uploaded and again.dataset_digest == first.result.dataset_digest
    assert again.holdout_metrics == first.result.holdout_metrics
    assert again.best_params == first.result.best_params
    # equal is not better by the margin: recorded as challenger, champion unchanged
    assert again.decision == "challenger" and again.champion_version_before == first.result.version
    assert again.champion_metric_before == first.result.metric_value  # scored on the same holdout
    client = local_env.mlflow_client()
    assert client.get_model_version_by_alias(first.spec.name, "champion").version == first.result.version
    challenger = client.get_model_version_by_alias(first.spec.name, "challenger")
    assert challenger.version == again.version and challenger.tags["mlops.decision"] == "challenger"
    prefix = f"datasets/{first.spec.dataset.name}/"
    listed = local_env.s3.list_objects_v2(Bucket=local_env.outputs.data_bucket, Prefix=prefix)
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"{prefix}{first.result.dataset_digest}/data.parquet", f"{prefix}schema.json",
    ]


def test_a_worse_model_becomes_challenger(first: First, local_env: Environment) -> None:
    stump = [{"family": "hist_gradient_boosting", "search_space": {"max_iter": [1], "max_depth": [1]}}]
    worse = train(churn_spec(first.spec.name, models=stump), local_env, data=first.df, progress=False)
    assert worse.decision == "challenger"
    assert worse.metric_value < first.result.metric_value
    assert "does not beat champion" in worse.reason
    assert local_env.mlflow_client().get_model_version_by_alias(first.spec.name, "champion").version == \
        first.result.version


@pytest.mark.parametrize(
    ("column", "check", "break_it"),
    [
        ("age", "missing_column", lambda df: df.drop(columns=["age"])),
        ("tenure_months", "wrong_dtype", lambda df: df.assign(tenure_months=df["tenure_months"].astype(str) + "m")),
        ("contract", "unseen_category", lambda df: df.assign(contract=df["contract"].replace("one-year", "weekly"))),
        ("monthly_charges", "null_rate",
         lambda df: df.assign(monthly_charges=df["monthly_charges"].mask(df.index % 2 == 0))),
    ],
)
def test_invalid_data_is_rejected_with_the_violation_named_and_nothing_registered(
    first: First, local_env: Environment, column: str, check: str, break_it: Any
) -> None:
    before_versions, before_runs = versions(local_env, first.spec.name), run_count(local_env, first.spec.name)
    with pytest.raises(DataValidationError) as info:
        train(first.spec, local_env, data=break_it(first.df.copy()), progress=False)
    assert [(v.column, v.check) for v in info.value.violations] == [(column, check)]
    assert f"{column}: {check}" in str(info.value)
    assert versions(local_env, first.spec.name) == before_versions
    assert run_count(local_env, first.spec.name) == before_runs


def test_a_failure_while_registering_leaves_no_version(
    first: First, local_env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = versions(local_env, first.spec.name)

    def fail(*_args: Any) -> None:
        raise RuntimeError("injected: the registry went away")

    monkeypatch.setattr(registry, "set_alias", fail)
    quick = churn_spec(first.spec.name, models=[{"family": "logistic_regression", "search_space": {"C": [1.0]}}])
    with pytest.raises(RuntimeError, match="injected"):
        train(quick, local_env, data=first.df, progress=False)
    assert versions(local_env, first.spec.name) == before
    client = local_env.mlflow_client()
    assert client.get_model_version_by_alias(first.spec.name, "champion").version == first.result.version
    experiment = client.get_experiment_by_name(first.spec.name)
    (latest,) = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.runName = 'train-{first.spec.name}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    assert latest.info.status == "FAILED"


def test_regression_through_the_cli(local_env: Environment, local_workdir: Path, tmp_path: Path) -> None:
    name = f"spend-{uuid.uuid4().hex[:8]}"
    generate(500, 5, target="monthly_spend").to_parquet(tmp_path / "spend.parquet", index=False)
    spec = {
        "name": name,
        "dataset": {"name": name, "source": str(tmp_path / "spend.parquet")},
        "target": "monthly_spend",  # task inferred: regression
        "exclude": ["customer_id"],
        "models": [{"family": "ridge", "search_space": {"alpha": {"loguniform": [0.01, 10.0]}}}],
        "promotion": {"floor": 20.0},
        "search": {"n_iter": 2, "cv": 2},
    }
    (tmp_path / "spend.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spend.yaml"), "--workdir", str(local_workdir), "--json"])
    assert result.exit_code == 0, result.output
    out = TrainResult.model_validate(json.loads(result.stdout))
    assert (out.task, out.metric, out.decision) == ("regression", "rmse", "champion")
    assert out.metric_value < 20.0 and out.holdout_metrics["r2"] > 0.8
    assert local_env.mlflow_client().get_model_version_by_alias(name, "champion").version == out.version


def test_cli_reports_a_bad_spec_and_bad_data_with_exit_codes(local_workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\ndataset: {name: x}\ntarget: y\nmodels: []\nmodles: []\n")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "bad.yaml"), "--workdir", str(local_workdir)])
    assert result.exit_code == 2
    assert "modles" in result.output and "models" in result.output


def test_spec_errors_name_the_key() -> None:
    good = churn_spec("x").model_dump(by_alias=True)
    with pytest.raises(SpecError, match=r"search\.n_iters"):
        TrainingSpec.parse(good | {"search": {"n_iters": 3}})
    with pytest.raises(SpecError, match=r"models\.0\.family.*unknown family 'xgboost'"):
        TrainingSpec.parse(good | {"models": [{"family": "xgboost"}]})
    with pytest.raises(SpecError, match="metric: unknown 'auc'"):
        TrainingSpec.parse(good | {"metric": "auc"})
    spec = churn_spec("x", models=[{"family": "logistic_regression", "search_space": {"Cee": [1.0]}}])
    estimator = make_estimator("logistic_regression", "classification", 0)
    with pytest.raises(SpecError, match=r"models\[0\]\.search_space\.Cee: not a parameter of LogisticRegression"):
        search_space(spec.models[0], 0, estimator)
    with pytest.raises(SpecError, match="does not support task regression"):
        make_estimator("logistic_regression", "regression", 0)


def test_end_to_end_with_the_tracking_server_on_postgres(pg_database: str, tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "pg-stack", backend_store_uri=pg_database)
    try:
        env = Environment(stack.up(timeout=180), stack.workdir)
        name = f"churn-pg-{uuid.uuid4().hex[:6]}"
        models = [{"family": "logistic_regression", "search_space": {"C": [1.0]}}]
        result = train(churn_spec(name, models=models), env, data=generate(400, 3), progress=False)
        assert result.decision == "champion"
        client = env.mlflow_client()
        assert client.get_model_version_by_alias(name, "champion").tags["mlops.dataset.digest"] == result.dataset_digest
    finally:
        stack.down(snapshot=False)


# --- lineage of the code (issue 12 section 3) -------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_code_lineage_from_a_checkout_clean_then_dirty(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print('v1')\n")
    _git(repo, "add", "train.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "v1")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert code_tags(repo, environ={}) == {"mlops.git.commit": head, "mlops.git.dirty": "false"}
    (repo / "train.py").write_text("print('v2, not committed')\n")
    assert code_tags(repo, environ={}) == {"mlops.git.commit": head, "mlops.git.dirty": "true"}


def test_code_lineage_in_the_image_comes_from_its_build_arguments(tmp_path: Path) -> None:
    image = {"MLOPS_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
             "MLOPS_IMAGE": "ghcr.io/mlops-platform/workloads:0.1.0"}
    # no .git (the image): only the variables say which code this is
    assert code_tags(tmp_path, environ={}) == {}
    assert code_tags(tmp_path, environ=image) == {
        "mlops.git.commit": image["MLOPS_GIT_COMMIT"], "mlops.image": image["MLOPS_IMAGE"]}
    # set, they win over a checkout: the image is what runs
    repo_root = Path(__file__).parents[2]
    assert code_tags(repo_root, environ=image)["mlops.git.commit"] == image["MLOPS_GIT_COMMIT"]


def test_a_run_trained_in_a_pod_records_the_commit_and_image(
    first: First, local_env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit, image = "fedcba9876543210fedcba9876543210fedcba98", "ghcr.io/mlops-platform/workloads:0.2.0"
    monkeypatch.setenv("MLOPS_GIT_COMMIT", commit)
    monkeypatch.setenv("MLOPS_IMAGE", image)
    quick = churn_spec(first.spec.name, models=[{"family": "logistic_regression", "search_space": {"C": [0.5]}}])
    uri_before, links_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    result = train(quick, local_env, data=first.df, progress=False)
    # the job pointed nothing in the process at its environment for good (workloads/__init__.py
    # sets the run-link switch for the whole process; the job restores whatever it found)
    assert mlflow.get_tracking_uri() == uri_before
    assert os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT") == links_before
    client = local_env.mlflow_client()
    for tags in (client.get_model_version(first.spec.name, result.version).tags, client.get_run(result.run_id).data.tags):
        assert (tags["mlops.git.commit"], tags["mlops.image"]) == (commit, image)
        assert "mlops.git.dirty" not in tags  # not a checkout: nothing to say about it


# --- the gate: a tie never promotes (issue 15 section 1) --------------------------------------


def test_the_default_margin_is_positive_and_a_tie_stays_challenger() -> None:
    auc, rmse = METRICS["roc_auc"], METRICS["rmse"]
    default = PromotionSpec()
    assert default.margin == DEFAULT_MARGIN > 0
    tie = ChampionScore(version="1", value=0.9854)
    assert decide(0.9854, tie, auc, default)[0] == "challenger"
    assert decide(0.9854 + DEFAULT_MARGIN / 2, tie, auc, default)[0] == "challenger"  # within the margin
    assert decide(0.9854 + 2 * DEFAULT_MARGIN, tie, auc, default)[0] == "champion"
    # even an explicit zero margin: equal is not better
    decision, reason = decide(0.9854, tie, auc, PromotionSpec(margin=0.0))
    assert decision == "challenger" and "does not beat champion v1" in reason
    assert decide(12.5, ChampionScore(version="3", value=12.5), rmse, PromotionSpec(margin=0.0))[0] == "challenger"
    assert decide(12.4, ChampionScore(version="3", value=12.5), rmse, default)[0] == "champion"  # lower is better
