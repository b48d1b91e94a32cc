"""Retraining on drift or decay: the champion's data plus the labelled captured rows, once per cooldown.

The retraining data (`retraining_data`) is one table whose `_split` column (workloads/data/
partition.py) says what each row is for: the champion's training rows and the labelled
captured rows kept for training are trained on; the champion's own holdout rows guard against
forgetting; a seeded share of the labelled captured rows (`retraining.recent_holdout` of the
spec, seeded with its `seed`) is held back, and the gate compares champion and challenger on
those (workloads/training/gate.py). Captured rows are sorted by request id, row and capture
time first, so the same captures always give the same table, digest and decision.

Under the endpoint's lock (lock.py) and outside its cooldown, that table is either trained on
here, through the training package's entry point, or, in the cluster (retraining Job manifests
mounted, retrain_jobs.py), stored under `layout.retrain_data_key` and handed to the retraining
Job(s) as `--data`: the split travels inside the table, so the Job trains and gates on exactly
these rows (it does not re-derive anything). The Job gates against the champion current when
it runs; the cooldown keeps a second retraining from changing it in between.
A failed retraining is recorded in the cooldown record and in the outcome (the CLI then exits
1); it does not fail the monitoring run that triggered it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads import layout
from workloads.data import dataset as datasets
from workloads.data import partition
from workloads.environment import Environment
from workloads.monitoring import retrain_jobs
from workloads.monitoring.lock import CooldownRecord, RetrainLock
from workloads.monitoring.reference import Champion
from workloads.monitoring.result import RetrainOutcome
from workloads.settings import MonitorSettings


def retrain(settings: MonitorSettings, env: Environment, champ: Champion, reference: pd.DataFrame,
            labelled: pd.DataFrame, monitor_run_id: str) -> RetrainOutcome:
    """Retrain unless disabled, nothing is labelled, another monitor holds the lock, or in cooldown."""
    if not settings.retrain:
        return RetrainOutcome(triggered=False, reason="retraining disabled (--no-retrain)")
    if labelled.empty:
        return RetrainOutcome(triggered=False, reason="no labelled rows in the window: nothing new to learn from")
    bucket = env.outputs.capture_bucket
    lock = RetrainLock(env.s3, bucket, settings.endpoint, timedelta(hours=settings.lock_stale_hours))
    if not lock.acquire():
        holder = lock.holder or {}
        return RetrainOutcome(triggered=False, reason=f"a retraining is already in flight "
                                                      f"({holder.get('owner')} since {holder.get('since')})")
    try:
        cooldown = CooldownRecord(env.s3, bucket, settings.endpoint)
        waiting = cooldown.cooling_down(settings.cooldown_hours)
        if waiting:
            return RetrainOutcome(triggered=False, reason=waiting)
        record = {"time": datetime.now(UTC).isoformat(), "monitor_run_id": monitor_run_id, "owner": lock.owner}
        cooldown.write(record | {"state": "started"})
        try:
            spec = _spec(champ, settings.retrain_spec)
            data = retraining_data(reference, labelled, champ, spec)
            jobs = retrain_jobs.jobs_dir()
            if jobs is not None:  # in the cluster: the retraining Job(s) train, not this pod
                outcome, state = _hand_to_jobs(env, settings.endpoint, jobs, data, monitor_run_id)
            else:
                outcome, state = _train_here(env, spec, data)
        except Exception as exc:  # the training job reports its own failure; the monitor records it
            cooldown.write(record | {"state": "failed", "error": str(exc)})
            return RetrainOutcome(triggered=True, reason="retraining failed", error=f"{type(exc).__name__}: {exc}")
        cooldown.write(record | state)
        return outcome
    finally:
        lock.release()


def retraining_data(reference: pd.DataFrame, labelled: pd.DataFrame, champ: Champion, spec: Any) -> pd.DataFrame:
    """The champion's data with each row's role, then the labelled captured rows it has not seen, split.

    The champion's rows keep what they were to it (partition.AGED): its `_split` when its data has
    one, else the seeded split recorded in its tags. Captured rows already in its data (by
    `_source_row`) are left out: the champion is never scored on rows it trained on.
    """
    classification = champ.tags["mlops.task"] == "classification"
    base = reference.copy()
    roles = partition.roles(reference, champ.target, classification=classification,
                            seed=int(champ.tags.get("mlops.split.seed", 0)),
                            holdout_fraction=float(champ.tags.get("mlops.split.holdout_fraction", 0.2)))
    base[partition.SPLIT] = roles.map(partition.AGED).astype(object)
    if partition.SOURCE_ROW not in base.columns:
        base[partition.SOURCE_ROW] = pd.Series([None] * len(base), dtype=object)
    rows = captured_rows(base, labelled, champ)
    rows = rows[~rows[partition.SOURCE_ROW].isin(set(base[partition.SOURCE_ROW].dropna()))]
    rows[partition.SPLIT] = partition.split_recent(
        rows, champ.target, classification=classification, seed=spec.seed,
        holdout_fraction=spec.retraining.recent_holdout).astype(object)
    return pd.concat([base, rows], ignore_index=True)


def captured_rows(base: pd.DataFrame, labelled: pd.DataFrame, champ: Champion) -> pd.DataFrame:
    """Labelled captured rows in `base`'s columns, in a fixed order: by request id, row, capture time.

    Columns the endpoint never saw (ids such as customer_id, excluded from the features) get
    the capture's `<request_id>/<row>` when they hold strings, else stay missing.
    """
    keys = [c for c in ("_request_id", "_row", "_ts") if c in labelled.columns]
    labelled = labelled.sort_values(keys, kind="stable").reset_index(drop=True)
    source = (labelled["_request_id"].astype(str) + "/" + labelled["_row"].astype(str)).to_numpy()
    rows = labelled[champ.features].copy()
    rows[champ.target] = labelled["label"].to_numpy()
    rows[partition.SOURCE_ROW] = source
    for column in base.columns:
        if column not in rows.columns and column != partition.SPLIT:
            if pd.api.types.is_string_dtype(base[column]) or base[column].dtype == object:
                rows[column] = source
            else:
                rows[column] = np.nan
    rows = rows.drop_duplicates(partition.SOURCE_ROW, keep="first")
    columns = [c for c in base.columns if c != partition.SPLIT]
    return rows[columns].astype(base[columns].dtypes.to_dict(), errors="ignore")


def _hand_to_jobs(env: Environment, endpoint: str, jobs: Path, newest: pd.DataFrame, run_id: str
                  ) -> tuple[RetrainOutcome, dict[str, Any]]:
    """Store the newest data where the Job can read it (the monitor may write only `monitoring/`), start the Jobs."""
    uri = datasets.write(newest, f"s3://{env.outputs.capture_bucket}/{layout.retrain_data_key(endpoint, run_id)}", env)
    names = retrain_jobs.create_jobs(jobs, uri)
    return (RetrainOutcome(triggered=True, reason=f"created retraining Job(s) {', '.join(names)} "
                                                  f"on {_described(newest)} at {uri}"),
            {"state": "job_created", "jobs": names})


def _train_here(env: Environment, spec: Any, data: pd.DataFrame) -> tuple[RetrainOutcome, dict[str, Any]]:
    from workloads.training.job import train
    from workloads.training.spec import widened_for

    spec, widened = widened_for(spec, data, env)
    result = train(spec, env, data=data, progress=False)
    reason = f"retrained on {_described(data)}: {result.reason}" + (f"; ranges widened: {widened}" if widened else "")
    return (RetrainOutcome(triggered=True, reason=reason, version=result.version, decision=result.decision,
                           run_id=result.run_id),
            {"state": "done", "version": result.version, "decision": result.decision, "run_id": result.run_id})


def _described(data: pd.DataFrame) -> str:
    counts = data[partition.SPLIT].value_counts()
    return (f"{counts.get(partition.TRAIN, 0)} + {counts.get(partition.RECENT_TRAIN, 0)} recent rows "
            f"(holdout {counts.get(partition.HOLDOUT, 0)}, recent held back {counts.get(partition.RECENT_HOLDOUT, 0)})")


def _spec(champ: Champion, retrain_spec: str | None) -> Any:
    """The training spec: `--retrain-spec`, else the one the champion was trained with."""
    import mlflow
    import yaml

    from workloads.training.spec import TrainingSpec

    if retrain_spec is not None:
        return TrainingSpec.from_yaml(retrain_spec)
    source = f"runs:/{champ.run_id}/spec.yaml"
    return TrainingSpec.parse(yaml.safe_load(mlflow.artifacts.load_text(source)), source)
