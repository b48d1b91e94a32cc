"""Retraining on drift or decay: the reference plus the labelled captured rows, once per cooldown.

Under the endpoint's lock (lock.py) and outside its cooldown, the newest data is either
trained on here, through the training package's entry point, or, in the cluster (retraining
Job manifests mounted, retrain_jobs.py), stored under `layout.retrain_data_key` and handed
to the retraining Job(s). A failed retraining is recorded in the cooldown record and in the
outcome (the CLI then exits 1); it does not fail the monitoring run that triggered it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads import layout
from workloads.data import dataset as datasets
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
            newest = newest_data(reference, labelled, champ)
            jobs = retrain_jobs.jobs_dir()
            if jobs is not None:  # in the cluster: the retraining Job(s) train, not this pod
                outcome, state = _hand_to_jobs(env, settings.endpoint, jobs, newest, monitor_run_id)
            else:
                outcome, state = _train_here(env, champ, settings, newest, len(reference), len(labelled))
        except Exception as exc:  # the training job reports its own failure; the monitor records it
            cooldown.write(record | {"state": "failed", "error": str(exc)})
            return RetrainOutcome(triggered=True, reason="retraining failed", error=f"{type(exc).__name__}: {exc}")
        cooldown.write(record | state)
        return outcome
    finally:
        lock.release()


def newest_data(reference: pd.DataFrame, labelled: pd.DataFrame, champ: Champion) -> pd.DataFrame:
    """Reference plus labelled captured rows, in the reference's columns.

    Columns the endpoint never saw (ids such as customer_id, excluded from the features) get
    the capture's `<request_id>/<row>` when they hold strings, else stay missing.
    """
    rows = labelled[champ.features].copy()
    rows[champ.target] = labelled["label"].to_numpy()
    for column in reference.columns:
        if column not in rows.columns:
            if pd.api.types.is_string_dtype(reference[column]) or reference[column].dtype == object:
                rows[column] = (labelled["_request_id"].astype(str) + "/" + labelled["_row"].astype(str)).to_numpy()
            else:
                rows[column] = np.nan
    rows = rows[list(reference.columns)].astype(reference.dtypes.to_dict(), errors="ignore")
    return pd.concat([reference, rows], ignore_index=True)


def _hand_to_jobs(env: Environment, endpoint: str, jobs: Path, newest: pd.DataFrame, run_id: str
                  ) -> tuple[RetrainOutcome, dict[str, Any]]:
    """Store the newest data where the Job can read it (the monitor may write only `monitoring/`), start the Jobs."""
    uri = datasets.write(newest, f"s3://{env.outputs.capture_bucket}/{layout.retrain_data_key(endpoint, run_id)}", env)
    names = retrain_jobs.create_jobs(jobs, uri)
    return (RetrainOutcome(triggered=True, reason=f"created retraining Job(s) {', '.join(names)} "
                                                  f"on {len(newest)} rows at {uri}"),
            {"state": "job_created", "jobs": names})


def _train_here(env: Environment, champ: Champion, settings: MonitorSettings, newest: pd.DataFrame,
                n_reference: int, n_labelled: int) -> tuple[RetrainOutcome, dict[str, Any]]:
    from workloads.training.job import train

    spec, widened = _widened(_spec(champ, settings.retrain_spec), newest, env)
    result = train(spec, env, data=newest, progress=False)
    reason = (f"retrained on {n_reference} reference + {n_labelled} labelled captured rows"
              + (f"; ranges widened: {widened}" if widened else ""))
    return (RetrainOutcome(triggered=True, reason=reason, version=result.version, decision=result.decision,
                           run_id=result.run_id),
            {"state": "done", "version": result.version, "decision": result.decision, "run_id": result.run_id})


def _spec(champ: Champion, retrain_spec: str | None) -> Any:
    """The training spec: `--retrain-spec`, else the one the champion was trained with."""
    import mlflow
    import yaml

    from workloads.training.spec import TrainingSpec

    if retrain_spec is not None:
        return TrainingSpec.from_yaml(retrain_spec)
    source = f"runs:/{champ.run_id}/spec.yaml"
    return TrainingSpec.parse(yaml.safe_load(mlflow.artifacts.load_text(source)), source)


def _widened(spec: Any, newest: pd.DataFrame, env: Environment) -> tuple[Any, str]:
    """The spec with its dataset schema's numeric ranges widened to cover the newest data.

    Drifted values are what retraining is for, so they must not fail the range check; kinds,
    categories and null rates are still enforced. The stored schema itself is left unchanged.
    """
    schema = spec.dataset.data_schema or datasets.load_schema(spec.dataset.name, env)
    if schema is None:
        return spec, ""
    columns, changes = dict(schema.columns), []
    for name, col in schema.columns.items():
        if name not in newest.columns or col.kind not in ("integer", "float") or newest[name].isna().all():
            continue
        lo, hi = float(newest[name].min()), float(newest[name].max())
        new_min = min(col.min, lo) if col.min is not None else None
        new_max = max(col.max, hi) if col.max is not None else None
        if (new_min, new_max) != (col.min, col.max):
            columns[name] = col.model_copy(update={"min": new_min, "max": new_max})
            changes.append(f"{name} [{new_min:g}, {new_max:g}]" if new_min is not None and new_max is not None
                           else name)
    dataset = spec.dataset.model_copy(update={"data_schema": schema.model_copy(update={"columns": columns})})
    return spec.model_copy(update={"dataset": dataset}), ", ".join(changes)
