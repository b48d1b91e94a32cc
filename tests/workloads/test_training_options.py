"""Training as a first user meets it (issue 15 section 2), against the real local stack.

String labels score with the spec's positive class (else the sorted second class); metrics a
target cannot have are refused with exit 2; a relative `dataset.source` is the spec file's;
identifier columns are dropped with a message (or refused); classifiers can serve per-class
probabilities; any scikit-learn estimator can be named by import path.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from typer.testing import CliRunner

from workloads.cli import app
from workloads.data import dataset
from workloads.data.sample import generate
from workloads.environment import Environment
from workloads.serving.loading import load_pyfunc
from workloads.serving.protocol import response_json
from workloads.training.errors import SpecError
from workloads.training.features import why_id_like
from workloads.training.job import train
from workloads.training.prepare import prepare
from workloads.training.report import TrainResult
from workloads.training.spec import TrainingSpec

pytestmark = pytest.mark.servers
QUICK_LR = [{"family": "logistic_regression", "search_space": {"C": [1.0]}}]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def spec_of(name: str, target: str, **overrides: Any) -> TrainingSpec:
    return TrainingSpec.parse({"name": name, "dataset": {"name": name}, "target": target, "models": QUICK_LR,
                               "search": {"n_iter": 1, "cv": 2}, "seed": 2, **overrides})


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    """scikit-learn's breast cancer data with its labels as a new user has them: strings."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.copy()
    frame["diagnosis"] = np.where(bunch.target == 0, "malignant", "benign")
    return frame


def holdout_of(df: pd.DataFrame, target: str, seed: int = 2) -> pd.DataFrame:
    return dataset.split(df, target, classification=True, seed=seed, holdout_fraction=0.2)[1]


def test_string_labels_score_with_the_sorted_second_class_and_serve_named_probabilities(
        cancer: pd.DataFrame, local_env: Environment) -> None:
    name = unique("cancer")
    result = train(spec_of(name, "diagnosis", metric="f1", predict="proba"), local_env, data=cancer, progress=False)
    assert result.decision == "champion"
    hold = holdout_of(cancer, "diagnosis")
    X, y = hold.drop(columns=["diagnosis"]), hold["diagnosis"]
    with local_env.tracking():
        logged = mlflow.sklearn.load_model(f"models:/{name}/{result.version}")
        # what `mlops serve` loads: skops with the serving allowlist, the pyfunc's predict_fn
        served = load_pyfunc(f"models:/{name}/{result.version}", pickle_allowed=False).predict(X.head(3))
    pipeline = logged.scored_model
    malignant = pipeline.predict_proba(X)[:, list(pipeline.classes_).index("malignant")]
    # "malignant" sorts after "benign": it is the positive class
    assert result.holdout_metrics["f1"] == pytest.approx(f1_score(y, pipeline.predict(X), pos_label="malignant"))
    assert result.holdout_metrics["roc_auc"] == pytest.approx(roc_auc_score(y == "malignant", malignant))
    assert result.holdout_metrics["average_precision"] == pytest.approx(
        average_precision_score(y == "malignant", malignant))
    assert local_env.mlflow_client().get_model_version(name, result.version).tags["mlops.positive_class"] == "malignant"
    # the pyfunc's predict (what `mlops serve` answers with): one probability column per class, named
    assert list(served.columns) == ["benign", "malignant"] and np.allclose(served.sum(axis=1), 1.0)
    body = json.loads(response_json(served))
    assert list(body["predictions"][0]) == ["benign", "malignant"] and len(body["predictions"]) == 3


def test_a_spec_positive_class_is_used_by_both_sides_of_the_gate(cancer: pd.DataFrame, local_env: Environment) -> None:
    name = unique("cancer-pos")
    first = train(spec_of(name, "diagnosis"), local_env, data=cancer, progress=False)
    second = train(spec_of(name, "diagnosis", metric="average_precision", positive_class="benign", predict="proba"),
                   local_env, data=cancer, progress=False)
    hold = holdout_of(cancer, "diagnosis")
    X, benign = hold.drop(columns=["diagnosis"]), hold["diagnosis"] == "benign"
    with local_env.tracking():
        models = [mlflow.sklearn.load_model(f"models:/{name}/{r.version}") for r in (first, second)]
    ap = [average_precision_score(benign, getattr(m, "scored_model", m).predict_proba(X)[:, 0]) for m in models]
    assert second.metric_value == pytest.approx(ap[1])
    assert second.champion_version_before == first.version
    assert second.champion_metric_before == pytest.approx(ap[0])  # the champion scored with benign positive too
    served = models[1].predict_proba(X.head(2))
    assert list(served.columns) == ["malignant", "benign"]  # the positive class last (capture keeps the last)


def _write_spec(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_average_precision_on_a_multiclass_target_is_refused_with_exit_2(
        local_workdir: Path, local_env: Environment, tmp_path: Path) -> None:
    name = unique("contract")
    generate(300, seed=3).to_csv(tmp_path / "customers.csv", index=False)
    spec = _write_spec(tmp_path / "multi.yaml", {
        "name": name, "dataset": {"name": name, "source": "customers.csv"}, "target": "contract",
        "exclude": ["customer_id"], "metric": "average_precision", "models": QUICK_LR})
    result = CliRunner().invoke(app, ["train", str(spec), "--workdir", str(local_workdir)])
    assert result.exit_code == 2, result.output
    assert "metric: average_precision is defined for binary targets only" in result.output
    assert "3 classes ['month-to-month', 'one-year', 'two-year']" in result.output
    assert "Traceback" not in result.output and "KeyError" not in result.output
    assert local_env.mlflow_client().get_experiment_by_name(name) is None  # refused before anything was logged


def test_a_relative_source_is_the_spec_files_and_an_id_column_is_dropped_fast(
        local_workdir: Path, local_env: Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5,000 rows with `customer_id` left among the features (no `exclude`)."""
    name = unique("ids")
    (tmp_path / "data").mkdir()
    generate(5000, seed=4).to_parquet(tmp_path / "data" / "churn.parquet", index=False)
    spec = _write_spec(tmp_path / "specs" / "churn.yaml", {
        "name": name, "dataset": {"name": name, "source": "../data/churn.parquet"}, "target": "churned",
        "models": QUICK_LR, "search": {"n_iter": 1, "cv": 2}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert TrainingSpec.from_yaml(spec).dataset.source == str(tmp_path / "data" / "churn.parquet")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["train", str(spec), "--workdir", str(local_workdir)])
    seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "dropped feature 'customer_id': its name marks an identifier" in result.output
    mv = local_env.mlflow_client().get_model_version(name, "1")
    assert mv.tags["mlops.features.dropped"] == "customer_id"
    with local_env.tracking():
        model = mlflow.sklearn.load_model(f"models:/{name}/1")
    X = generate(50, seed=5).drop(columns=["churned", "customer_id"])
    assert model.named_steps["prep"].transform(X).shape[1] < 30  # not one column per customer
    assert seconds < 60, f"{seconds:.1f} s"  # measured ~6 s here; one-hot ids took ~54 s (issue 15)


def test_identifier_columns_can_be_refused_and_are_recognised_by_name_or_uniqueness(local_env: Environment) -> None:
    df = generate(400, seed=6).assign(order_ref=[f"o-{i}" for i in range(400)])
    refusing = spec_of(unique("refuse"), "churned", exclude=["customer_id"], id_columns={"action": "refuse"})
    with pytest.raises(SpecError, match=r"'order_ref': 400 distinct values in 400 rows .* add them to exclude") as e:
        train(refusing, local_env, data=df, progress=False)
    assert e.value.exit_code == 2
    assert why_id_like("customerId", pd.Series([1, 2]), 0.5) and why_id_like("uuid", pd.Series([1.0]), 0.5)
    assert why_id_like("paid", pd.Series([1, 2]), 0.5) is None and why_id_like("grid", df["region"], 0.5) is None
    assert why_id_like("monthly_charges", df["monthly_charges"], 0.5) is None  # numbers are distinct by nature
    assert why_id_like("region", df["region"], 0.5) is None  # 4 repeated values
    few = pd.Series([f"city-{i}" for i in range(15)])
    assert why_id_like("city", few, 0.5) is None  # a small table's categories are not judged by ratio


def test_an_estimator_named_by_import_path_trains_and_bad_paths_are_refused_at_spec_load(
        local_env: Environment) -> None:
    name = unique("extra")
    extra = [{"estimator": "sklearn.ensemble.ExtraTreesClassifier",
              "search_space": {"n_estimators": [20], "max_depth": [3, 5]}}]
    result = train(spec_of(name, "churned", exclude=["customer_id"], models=extra, search={"n_iter": 2, "cv": 2}),
                   local_env,
                   data=generate(600, seed=7), progress=False)
    assert (result.best_family, result.n_candidates, result.decision) == (
        "sklearn.ensemble.ExtraTreesClassifier", 2, "champion")
    with local_env.tracking():
        model = mlflow.sklearn.load_model(f"models:/{name}/{result.version}")
    assert type(model.named_steps["model"]).__name__ == "ExtraTreesClassifier"
    for path, message in [
        ("sklearn.ensemble.ExtraTreeClassifer", "module 'sklearn.ensemble' has no 'ExtraTreeClassifer'"),
        ("sklearn.nonexistent.Thing", "cannot import 'sklearn.nonexistent'"),
        ("os.path.join", "not a scikit-learn estimator class"),
        ("ExtraTreesClassifier", "not an import path"),
    ]:
        with pytest.raises(SpecError, match=rf"models\.0\.estimator: .*{message}"):
            spec_of("x", "churned", models=[{"estimator": path}])
    with pytest.raises(SpecError, match="exactly one of family"):
        spec_of("x", "churned", models=[{"family": "random_forest", "estimator": "sklearn.svm.SVC"}])
    regressor = spec_of(unique("wrong-task"), "churned", exclude=["customer_id"],
                        models=[{"estimator": "sklearn.ensemble.ExtraTreesRegressor"}])
    with pytest.raises(SpecError, match="is for regression, but the task is classification"):
        train(regressor, local_env, data=generate(200, seed=7), progress=False)


def test_recent_rows_are_weighted_when_asked_and_refused_for_estimators_without_weights(
        local_env: Environment) -> None:
    df = generate(400, seed=8)
    df["_split"] = np.select([df.index < 240, df.index < 300, df.index < 350],
                             ["train", "holdout", "recent_train"], "recent_holdout")
    weighted = spec_of(unique("weights"), "churned", exclude=["customer_id"], retraining={"recent_weight": 5.0})
    prep = prepare(weighted, local_env, df)
    assert prep.w_train is not None and list(np.unique(prep.w_train, return_counts=True)[1]) == [240, 50]
    assert prep.w_train[-50:].tolist() == [5.0] * 50 and int(prep.recent.sum()) == 50
    knn = spec_of(unique("knn"), "churned", exclude=["customer_id"], retraining={"recent_weight": 5.0},
                  models=[{"estimator": "sklearn.neighbors.KNeighborsClassifier"}])
    with pytest.raises(SpecError, match=r"retraining.recent_weight: 5.0, but models\[0\].*does not take sample_weight"):
        prepare(knn, local_env, df)
    with pytest.raises(SpecError, match="predict: proba, but models"):
        prepare(spec_of(unique("svc"), "churned", exclude=["customer_id"], predict="proba",
                        models=[{"estimator": "sklearn.svm.LinearSVC"}]), local_env, df)


def test_regression_cannot_serve_probabilities(local_env: Environment) -> None:
    with pytest.raises(SpecError, match="for classification, but task is regression"):
        spec_of("x", "monthly_spend", task="regression", predict="proba")
    inferred = spec_of(unique("spend"), "monthly_spend", exclude=["customer_id"], predict="proba",
                       models=[{"family": "ridge"}])
    with pytest.raises(SpecError, match="is regression"):
        prepare(inferred, local_env, generate(200, seed=9, target="monthly_spend"))


def test_train_result_lists_what_was_dropped(local_env: Environment) -> None:
    """`--json` carries what the progress line says: the dropped columns and why."""
    out = train(spec_of(unique("json"), "churned", models=QUICK_LR), local_env, data=generate(300, seed=10),
                progress=False)
    assert TrainResult.model_validate_json(out.model_dump_json()).dropped_columns == {
        "customer_id": "its name marks an identifier"}
