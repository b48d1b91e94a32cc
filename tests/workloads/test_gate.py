"""The gate after drift and the data it judges on, without servers (issue 15 section 1).

- the decision rules: win on the recent held-back rows by more than the margin, and don't forget
  (the challenger on the champion's holdout within `max_forgetting` of its recorded metric);
- `judge` scores both models on exactly the rows the partition names;
- the retraining table (monitoring/retrain.py): the champion's rows keep their roles, captured
  rows come in a fixed order (same captures, same digest), are held back by a seeded share, and
  rows already in the champion's data never come back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from workloads.data import dataset, partition
from workloads.data.dataset import DataError
from workloads.data.sample import generate
from workloads.monitoring.reference import Champion
from workloads.monitoring.retrain import retraining_data
from workloads.training.gate import (
    CHALLENGER,
    CHAMPION,
    Comparison,
    Current,
    GateReport,
    decide_after_drift,
    judge,
)
from workloads.training.metrics import METRICS, score
from workloads.training.models import build_pipeline, make_estimator
from workloads.training.spec import PromotionSpec, TrainingSpec

AUC, RMSE = METRICS["roc_auc"], METRICS["rmse"]
FEATURES = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "age", "num_products",
            "contract", "payment_method", "region", "internet_service"]


def spec(**overrides) -> TrainingSpec:
    return TrainingSpec.parse({"name": "g", "dataset": {"name": "g"}, "target": "churned",
                               "exclude": ["customer_id"], "models": [{"family": "logistic_regression"}],
                               "seed": 5, **overrides})


# --- the decision ---------------------------------------------------------------------------


def test_after_drift_the_recent_rows_decide_and_forgetting_is_refused() -> None:
    rules = PromotionSpec(margin=0.002, max_forgetting=0.05)
    recent = Comparison(rows=300, challenger=0.72, champion=0.70)
    kept = Comparison(rows=800, challenger=0.79, champion=0.80, champion_recorded=0.80)
    assert decide_after_drift(kept, recent, "1", None, AUC, rules)[0] == CHAMPION
    # the same win on recent rows, but 0.06 lost on the champion's holdout: forgetting
    forgot = kept.model_copy(update={"challenger": 0.74})
    decision, reason = decide_after_drift(forgot, recent, "1", None, AUC, rules)
    assert decision == CHALLENGER and reason.startswith("forgets: 0.7400 on the champion's 800 holdout rows")
    # exactly at the limit is still kept; a tie on the recent rows never promotes
    edge = kept.model_copy(update={"challenger": 0.75})
    assert decide_after_drift(edge, recent, "1", None, AUC, rules)[0] == CHAMPION
    tie = recent.model_copy(update={"challenger": 0.70})
    assert decide_after_drift(kept, tie, "1", None, AUC, rules)[0] == CHALLENGER
    # the recorded holdout metric is the reference, not a re-scored one
    recorded_higher = kept.model_copy(update={"champion": 0.70, "champion_recorded": 0.90})
    assert decide_after_drift(recorded_higher, recent, "1", None, AUC, rules)[0] == CHALLENGER
    # an unscorable champion is never replaced; the floor applies to the recent rows
    assert decide_after_drift(kept, recent, "1", "KeyError: 'x'", AUC, rules)[0] == CHALLENGER
    floored = PromotionSpec(margin=0.002, floor=0.75)
    assert "does not pass the floor" in decide_after_drift(kept, recent, "1", None, AUC, floored)[1]


def test_for_lower_is_better_metrics_the_guard_looks_upwards() -> None:
    rules = PromotionSpec(margin=0.1, max_forgetting=1.0)
    recent = Comparison(rows=100, challenger=10.0, champion=12.0)
    assert decide_after_drift(Comparison(rows=400, challenger=8.9, champion_recorded=8.0), recent, "2", None,
                              RMSE, rules)[0] == CHAMPION
    assert decide_after_drift(Comparison(rows=400, challenger=9.1, champion_recorded=8.0), recent, "2", None,
                              RMSE, rules)[0] == CHALLENGER


def _fit(df: pd.DataFrame, C: float) -> object:
    X = df[FEATURES]
    model = build_pipeline(X, make_estimator("logistic_regression", "classification", 0))
    model.set_params(model__C=C)
    return model.fit(X, df["churned"])


def test_judge_scores_both_models_on_the_rows_the_partition_names() -> None:
    old, new = generate(600, seed=1), generate(200, seed=2, shift=1.0, concept_drift=0.7)
    champion_model, challenger = _fit(old, 1.0), _fit(pd.concat([old, new.head(100)]), 0.1)
    held = pd.concat([old.tail(150), new.tail(100)], ignore_index=True)
    recent = np.r_[np.zeros(150, bool), np.ones(100, bool)]
    recorded = score(champion_model, old.tail(150)[FEATURES], old.tail(150)["churned"], AUC, 2)
    report = judge(Current(version="1", model=champion_model, recorded=recorded), challenger, held[FEATURES],
                   held["churned"], recent, AUC, 2, PromotionSpec(max_forgetting=1.0))
    tail = new.tail(100)
    assert report.recent is not None and report.recent.rows == 100 and report.holdout.rows == 150
    assert report.recent.champion == score(champion_model, tail[FEATURES], tail["churned"], AUC, 2)
    assert report.recent.challenger == score(challenger, tail[FEATURES], tail["churned"], AUC, 2)
    assert report.holdout.champion == report.holdout.champion_recorded == recorded
    won = report.recent.challenger > report.recent.champion + 0.001
    assert report.decision == (CHAMPION if won else CHALLENGER)
    # recorded for MLflow: tags and metrics with both datasets' numbers, and read back the same
    tags = report.tags()
    assert float(tags["mlops.gate.recent.champion"]) == report.recent.champion
    assert set(report.metrics()) >= {"gate.recent.challenger", "gate.recent.champion", "gate.holdout.challenger",
                                     "gate.holdout.champion_recorded"}
    assert GateReport.from_tags(tags) == report
    # without recent rows it is the fresh-training gate on the whole holdout
    fresh = judge(Current(version="1", model=champion_model), challenger, held[FEATURES], held["churned"],
                  np.zeros(250, bool), AUC, 2, PromotionSpec())
    assert fresh.recent is None and fresh.holdout.rows == 250


# --- the partition --------------------------------------------------------------------------


def test_roles_come_from_the_split_column_else_from_the_seeded_split() -> None:
    df = generate(200, seed=4)
    seeded = partition.roles(df, "churned", classification=True, seed=9, holdout_fraction=0.25)
    _, holdout = dataset.split(df, "churned", classification=True, seed=9, holdout_fraction=0.25)
    assert sorted(seeded.index[seeded == partition.HOLDOUT]) == sorted(holdout.index)
    marked = df.assign(_split=np.where(df.index < 150, "train", "holdout"))
    assert (partition.roles(marked, "churned", classification=True, seed=9, holdout_fraction=0.25)
            == marked["_split"]).all()
    with pytest.raises(DataError, match="unknown role"):
        partition.roles(df.assign(_split="test"), "churned", classification=True, seed=9, holdout_fraction=0.2)
    with pytest.raises(DataError, match="need holdout rows"):
        partition.roles(df.assign(_split=np.where(df.index < 150, "train", "recent_holdout")), "churned",
                        classification=True, seed=9, holdout_fraction=0.2)


# --- the retraining table -------------------------------------------------------------------


def champion_of(tags: dict[str, str]) -> Champion:
    return Champion(name="g", version="1", run_id=None, features=FEATURES,
                    tags={"mlops.target": "churned", "mlops.task": "classification", "mlops.dataset.uri": "s3://x/y",
                          "mlops.split.seed": "3", "mlops.split.holdout_fraction": "0.2", **tags})


def labelled_window(n: int, seed: int) -> pd.DataFrame:
    """Captured rows (all at one timestamp, as one flush writes them) with their labels joined."""
    rows = generate(n, seed=seed, shift=1.0, concept_drift=0.5)
    window = rows[FEATURES].copy()
    window["_request_id"] = [f"req-{i // 7:04d}" for i in range(n)]
    window["_row"] = [i % 7 for i in range(n)]
    window["_ts"] = pd.Timestamp(datetime(2026, 12, 1, tzinfo=UTC))
    window["label"] = rows["churned"].to_numpy()
    return window


def test_retraining_data_keeps_the_champions_roles_and_holds_recent_rows_back() -> None:
    reference = generate(500, seed=8)
    data = retraining_data(reference, labelled_window(120, 9), champion_of({}), spec())
    roles = data["_split"].value_counts().to_dict()
    assert roles == {"train": 400, "holdout": 100, "recent_train": 60, "recent_holdout": 60}
    # the champion's rows keep the split it was trained with (its tags), so its holdout scores it
    _, its_holdout = dataset.split(reference, "churned", classification=True, seed=3, holdout_fraction=0.2)
    assert sorted(data.index[data["_split"] == "holdout"]) == sorted(its_holdout.index)
    recent = data[data["_split"].str.startswith("recent")]
    assert recent["_source_row"].str.match(r"req-\d{4}/\d$").all() and recent["_source_row"].is_unique
    assert recent["customer_id"].tolist() == recent["_source_row"].tolist()  # a column the endpoint never saw
    held_share = spec(retraining={"recent_holdout": 0.25})
    assert (retraining_data(reference, labelled_window(120, 9), champion_of({}), held_share)["_split"]
            == "recent_holdout").sum() == 30


def test_the_same_captures_in_any_order_give_the_same_table_and_digest() -> None:
    reference, window = generate(300, seed=10), labelled_window(140, 11)
    first = retraining_data(reference, window, champion_of({}), spec())
    for seed in (1, 2, 3):  # capture files listed (and concatenated) in another order
        shuffled = window.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        again = retraining_data(reference, shuffled, champion_of({}), spec())
        assert dataset.digest(again) == dataset.digest(first)
        pd.testing.assert_frame_equal(again, first)
    # a different held-back seed is a different table: the digest does see the split
    assert dataset.digest(retraining_data(reference, window, champion_of({}), spec(seed=6))) != dataset.digest(first)


def test_captured_rows_the_champion_already_has_never_come_back() -> None:
    """A retrained champion's data holds captured rows; the next window may label them again."""
    first = retraining_data(generate(300, seed=12), labelled_window(100, 13), champion_of({}), spec())
    later = labelled_window(100, 13)  # the same captures ...
    later["_ts"] = later["_ts"] + timedelta(hours=1)
    newer = labelled_window(40, 14)
    newer["_request_id"] = "new-" + newer["_request_id"]  # ... plus 40 new ones
    second = retraining_data(first, pd.concat([later, newer], ignore_index=True), champion_of({}), spec())
    assert len(second) == len(first) + 40
    # what the previous challenger trained on is training data now; what it never saw, holdout
    assert (second["_split"].head(len(first)) == first["_split"].map(partition.AGED)).all()
    assert set(second["_split"].tail(40)) == {"recent_train", "recent_holdout"}
