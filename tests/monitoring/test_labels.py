"""Labels the monitor trusts (issue 14, section 4): one label per captured row, repeats refused and reported.

The issue's reproduction on the session's local stack: traffic is captured under server-assigned ids
and labelled under `labels/<endpoint>/` of the capture bucket (what the stack configures); then rows
are captured again under the same ids (what a client could do while servers took its X-Request-Id),
chosen so that the labels contradict the model. Joined naively, the labelled rows double and the
metric collapses; the monitor must keep its metric (within noise) and report the repeats.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from workloads import layout
from workloads.data.sample import generate
from workloads.environment import Environment, StackOutputs
from workloads.monitoring.labels import one_per_key, one_row_per_key
from workloads.monitoring.monitor import monitor
from workloads.monitoring.reference import as_signature_types
from workloads.settings import MonitorSettings

pytestmark = pytest.mark.servers
MODEL = "labels-churn"
NOW = datetime.now(UTC)
ROWS_PER_REQUEST = 25


@pytest.fixture(scope="module")
def champion(local_stack: StackOutputs) -> dict:
    import mlflow

    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    env = Environment(local_stack)
    spec = TrainingSpec.parse({
        "name": MODEL, "dataset": {"name": MODEL}, "target": "churned", "exclude": ["customer_id"],
        "metric": "roc_auc", "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
        "search": {"n_iter": 1, "cv": 2}, "seed": 5,
    })
    result = train(spec, env, data=generate(1500, seed=1), progress=False)
    with env.tracking():
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")
    return {"version": result.version, "model": model}


@pytest.fixture
def env(local_stack: StackOutputs, tmp_path: Path) -> Environment:
    return Environment(local_stack, tmp_path)


def captured(features: pd.DataFrame, ids: list[str], champion: dict, minutes_ago: int) -> pd.DataFrame:
    """`features` as `mlops serve` captures them: `ROWS_PER_REQUEST` rows per request id."""
    frame = features.reset_index(drop=True).copy()
    frame["_request_id"] = [ids[i // ROWS_PER_REQUEST] for i in range(len(frame))]
    frame["_row"] = [i % ROWS_PER_REQUEST for i in range(len(frame))]
    frame["_ts"] = pd.Timestamp(NOW - timedelta(minutes=minutes_ago))
    frame["_model_name"], frame["_model_version"] = MODEL, champion["version"]
    frame["_prediction"] = champion["model"].predict(as_signature_types(features, champion["model"]))
    return frame


def put(env: Environment, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    env.s3.put_object(Bucket=env.outputs.capture_bucket, Key=key, Body=buffer.getvalue())


def scores(champion: dict, features: pd.DataFrame) -> np.ndarray:
    return champion["model"]._model_impl.predict_proba(as_signature_types(features, champion["model"]))[:, 1]


def test_reused_request_ids_cannot_poison_the_labelled_metric(env: Environment, champion: dict) -> None:
    endpoint = "poisoned"
    traffic = generate(400, seed=31)
    features = traffic.drop(columns=["churned", "customer_id"])
    ids = [str(uuid.uuid4()) for _ in range(len(traffic) // ROWS_PER_REQUEST)]
    honest = captured(features, ids, champion, minutes_ago=30)
    put(env, layout.capture_key(endpoint, NOW, uuid.uuid4().hex), honest)
    labels = pd.DataFrame({"request_id": honest["_request_id"], "row": honest["_row"], "label": traffic["churned"]})
    prefix = layout.labels_prefix(endpoint)
    put(env, f"{prefix}day-1.parquet", labels)
    put(env, f"{prefix}day-1-uploaded-again.parquet", labels)  # the same labels twice: used once
    settings = MonitorSettings(endpoint=endpoint, model=MODEL, labels=f"s3://{env.outputs.capture_bucket}/{prefix}",
                               retrain=False)
    clean = monitor(settings, env, now=NOW)
    assert clean.performance is not None and clean.labels is not None
    assert clean.labels.repeated_labels == 400 and clean.labels.joined_rows == 400 and not clean.labels.reused_ids

    # The attack: half the requests again under the same ids, rows the model scores opposite to their label.
    pool = generate(4000, seed=32).drop(columns=["churned", "customer_id"])
    ranked = pool.iloc[np.argsort(scores(champion, pool))]
    attacked = honest["_request_id"].isin(ids[::2]).to_numpy()
    wrong = np.where(traffic["churned"].to_numpy()[attacked] == 1, np.arange(attacked.sum()),
                     len(ranked) - 1 - np.arange(attacked.sum()))
    forged = captured(ranked.iloc[wrong], ids[::2], champion, minutes_ago=10)
    put(env, layout.capture_key(endpoint, NOW, uuid.uuid4().hex), forged)
    # And a capture file stored twice (a flush retried after a write that landed): identical rows.
    put(env, layout.capture_key(endpoint, NOW, uuid.uuid4().hex), honest[~attacked])

    naive = pd.concat([honest, forged]).merge(labels, left_on=["_request_id", "_row"], right_on=["request_id", "row"])
    naive_auc = roc_auc_score(naive["label"], scores(champion, naive[features.columns]))
    result = monitor(settings, env, now=NOW)
    print(f"roc_auc clean {clean.performance.current:.3f} on {clean.performance.labelled_rows} rows; "
          f"naive join {naive_auc:.3f} on {len(naive)} rows; monitor {result.performance.current:.3f} on "
          f"{result.performance.labelled_rows} rows; {result.labels}")
    assert len(naive) == 600 and naive_auc < clean.performance.current - 0.3  # the attack works on a naive join
    assert result.labels is not None and result.performance is not None
    assert result.labels.reused_ids == 200 and result.labels.reused_id_rows == 400  # 8 requests x 25 rows, twice
    assert result.labels.replayed_rows == 200 and result.labels.joined_rows == 200
    assert abs(result.performance.current - clean.performance.current) < 0.06
    assert any("captured by more than one request" in r for r in result.reasons)


def test_conflicting_labels_are_dropped_and_repeats_used_once() -> None:
    labels = pd.DataFrame({"request_id": ["a", "a", "b", "b", "c", "d"], "row": [0, 0, 0, 0, 0, 1],
                           "label": [1, 1, 0, 1, 0, 1]})
    one = one_per_key(labels)
    assert one.table.to_dict("records") == [{"request_id": "a", "row": 0, "label": 1},
                                            {"request_id": "c", "row": 0, "label": 0},
                                            {"request_id": "d", "row": 1, "label": 1}]
    assert (one.read, one.repeated, one.conflicting) == (6, 1, 1)


def test_repeated_captured_keys_are_refused_identical_copies_kept_once() -> None:
    ts = pd.Timestamp(NOW)
    matched = pd.DataFrame({"_request_id": ["a", "a", "b", "b", "c"], "_row": [0, 0, 0, 0, 0],
                            "_ts": [ts, ts, ts, ts + pd.Timedelta(seconds=1), ts], "label": [1, 1, 1, 1, 0]})
    rows, keys, key_rows, replayed = one_row_per_key(matched)
    assert rows["_request_id"].tolist() == ["a", "c"] and (keys, key_rows, replayed) == (1, 2, 1)
