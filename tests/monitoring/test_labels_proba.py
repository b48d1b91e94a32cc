"""A model serving class probabilities with string labels, monitored (issue 14, reference.py bug).

Capture keeps the last probability column as `_prediction` (for a binary model the positive class);
the reference's prediction baseline must be that same column, and string class labels must not break
the baseline (it used to cast the model's answer to float and take column 0).
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workloads import layout
from workloads.data.sample import generate
from workloads.environment import Environment, StackOutputs
from workloads.monitoring.monitor import monitor
from workloads.monitoring.reference import as_signature_types
from workloads.settings import MonitorSettings

pytestmark = pytest.mark.servers
MODEL = "labels-proba"
NOW = datetime.now(UTC)


def named(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(churned=np.where(df["churned"] == 1, "leaves", "stays"))


def test_a_proba_model_with_string_labels_is_monitored(local_stack: StackOutputs, tmp_path: Path) -> None:
    import mlflow

    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    env = Environment(local_stack, tmp_path)
    spec = TrainingSpec.parse({
        "name": MODEL, "dataset": {"name": MODEL}, "target": "churned", "exclude": ["customer_id"],
        "metric": "roc_auc", "predict": "proba", "positive_class": "leaves",
        "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
        "search": {"n_iter": 1, "cv": 2}, "seed": 5,
    })
    result = train(spec, env, data=named(generate(1500, seed=1)), progress=False)
    with env.tracking():
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")
    traffic = named(generate(400, seed=41))
    features = traffic.drop(columns=["churned", "customer_id"])
    answers = model.predict(as_signature_types(features, model))
    assert list(answers.columns) == ["stays", "leaves"]  # the positive class last
    frame = features.copy()
    frame["_request_id"] = [str(uuid.uuid4()) for _ in range(len(frame))]
    frame["_row"] = 0
    frame["_ts"] = pd.Timestamp(NOW - timedelta(minutes=5))
    frame["_model_name"], frame["_model_version"] = MODEL, result.version
    frame["_prediction"] = answers["leaves"].to_numpy()  # what capture keeps: the last column
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    env.s3.put_object(Bucket=env.outputs.capture_bucket, Key=layout.capture_key("proba", NOW, uuid.uuid4().hex),
                      Body=buffer.getvalue())
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": frame["_request_id"], "row": 0, "label": traffic["churned"]}).to_csv(labels, index=False)

    watched = monitor(MonitorSettings(endpoint="proba", model=MODEL, labels=str(labels), retrain=False), env, now=NOW)
    assert watched.status == "ok", watched.reasons
    assert watched.drift is not None and watched.drift.prediction is not None
    # Same column on both sides: the champion on its own kind of traffic does not drift.
    assert watched.drift.prediction.psi is not None and watched.drift.prediction.psi < 0.1, watched.drift.prediction
    assert watched.performance is not None and watched.performance.current > 0.7


def test_the_baseline_is_the_column_capture_keeps() -> None:
    from workloads.capture.table import _prediction_column
    from workloads.monitoring.reference import baseline_column

    table = pd.DataFrame({"stays": [0.9, 0.2], "leaves": [0.1, 0.8]})
    np.testing.assert_array_equal(baseline_column(table, 2), _prediction_column(table, 2))
    np.testing.assert_array_equal(baseline_column(table, 2), [0.1, 0.8])
    labels = baseline_column(np.array(["stays", "leaves"], dtype=object), 2)  # a label model's string classes
    assert labels.tolist() == ["stays", "leaves"]
    assert baseline_column(np.array([0, 1]), 2).dtype == float
