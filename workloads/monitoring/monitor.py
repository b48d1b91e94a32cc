"""Monitoring an endpoint once: observe, then act, inside one MLflow run.

observe: resolve `models:/<model>@<alias>` and its training data (reference.py); plan the
  captured window (window.py: its size from capture summaries and file footers, no rows read;
  its statistics merged from the summaries or read in bounded batches, current.py). Too few rows -> `insufficient_data`; a feature column missing
  or of the wrong kind -> `data_integrity_failure`; else drift against the cached reference
  profiles (drift.py) and, with labels (labels.py), the champion's metric on the labelled rows
  (performance.py). Params, metrics, plots and the HTML report go to the run (report.py).
  With a rollout (`--rollout shadow|canary`) also champion against challenger on the same window
  (rollout.py).
act: promote or roll back the challenger (rollout.py); alert on drift, decay, integrity failure or
  a rollout decision (alerts.py; into the environment's workdir when no webhook or SNS topic is
  set; the alert says which); retrain on drift or decay (retrain.py).
Both steps run inside `monitoring_run` (run.py): the run ends FINISHED with its status only
when both complete; any exception in either ends it FAILED and raises `MonitorError`.
A completed run's figures then go to the Pushgateway when one is configured (export.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from workloads.environment import Environment
from workloads.monitoring import rollout
from workloads.monitoring.alerts import send_alert
from workloads.monitoring.drift import DriftReport, DriftThresholds, compare
from workloads.monitoring.export import push_run
from workloads.monitoring.labels import join_labels, load_labels
from workloads.monitoring.performance import performance
from workloads.monitoring.profile import ReferenceProfile
from workloads.monitoring.reference import (
    Champion,
    feature_profile,
    load_reference,
    prediction_profile,
    resolve_champion,
)
from workloads.monitoring.report import log_report, metrics
from workloads.monitoring.result import ALERTING, RETRAINING, MonitorResult, RolloutOutcome
from workloads.monitoring.retrain import retrain
from workloads.monitoring.run import MonitoringRun, monitoring_run
from workloads.monitoring.window import CapturedWindow, describe, load_window
from workloads.settings import MonitorSettings

NOT_PARAMS = {"alert_webhook", "alert_sns_topic_arn"}  # where alerts go is not a run parameter


@dataclass
class Observed:
    """What observing found: the result so far, and what acting needs."""

    result: MonitorResult
    champion: Champion
    window: CapturedWindow
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)
    profile: ReferenceProfile | None = None
    labelled: pd.DataFrame = field(default_factory=pd.DataFrame)


def monitor(settings: MonitorSettings, env: Environment, *, now: datetime | None = None) -> MonitorResult:
    """Monitor `settings.endpoint` once; see the module docstring. Raises MonitorError when it cannot finish."""
    now = now or datetime.now(UTC)
    with env.tracking():  # MLflow's fluent API (model info, model loading, training) points at env
        with monitoring_run(env.mlflow_client(), settings.endpoint, now, s3_endpoint=env.outputs.s3_endpoint) as run:
            seen = observe(settings, env, run, now)
            act(seen, settings, env)
            run.result = seen.result
    # Only a completed run is pushed: a missing push is what the "monitor not running" alert sees.
    push_run(seen.result, namespace=env.outputs.namespace)
    return seen.result


def observe(settings: MonitorSettings, env: Environment, run: MonitoringRun, now: datetime) -> Observed:
    champ = resolve_champion(run.client, settings.model, settings.alias)
    run.log_params({**settings.model_dump(exclude=NOT_PARAMS), "model_version": champ.version})
    window = load_window(env, settings.endpoint, hours=settings.window_hours, records=settings.window_records,
                         now=now)
    result = MonitorResult(
        status="ok", reasons=[], endpoint=settings.endpoint, model_name=settings.model, model_version=champ.version,
        alias=settings.alias, window=describe(window, hours=settings.window_hours, records=settings.window_records,
                                              now=now),
        run_id=run.run_id, experiment=run.experiment)
    seen = Observed(result, champ, window)
    if len(window) < settings.min_rows:
        result.status = "insufficient_data"
        result.reasons.append(f"{len(window)} captured rows in the window, below min_rows={settings.min_rows}")
    else:
        _compare(seen, settings, env)
    if settings.rollout != "none":
        result.rollout = (rollout.judge(run.client, settings, champ, window, seen.labelled, seen.profile)
                          if result.status not in ("insufficient_data", "data_integrity_failure") else
                          RolloutOutcome(mode=settings.rollout, decision="wait", reason=f"window is {result.status}"))
    result.report_uri = log_report(run.client, run.run_id, result, seen.profile, window.sample)
    run.client.log_batch(run.run_id, metrics=metrics(result, now))
    return seen


def act(seen: Observed, settings: MonitorSettings, env: Environment) -> None:
    """Promote or roll back, alert and retrain on what `observe` found (only once its report is logged)."""
    result = seen.result
    if result.rollout is not None:
        rollout.apply(result.rollout, env.mlflow_client(), settings, env, result.run_id)
    decided = bool(result.rollout and result.rollout.applied)
    if result.status in ALERTING or decided:
        result.alert = send_alert(
            {"status": result.status, "endpoint": settings.endpoint, "model": settings.model,
             "version": result.model_version, "reasons": result.reasons, "monitor_run_id": result.run_id,
             **rollout.alert_fields(result)},
            workdir=env.workdir, webhook=settings.alert_webhook, sns_topic_arn=settings.alert_sns_topic_arn,
        )
    if result.status in RETRAINING:
        result.retraining = retrain(settings, env, seen.champion, seen.reference, seen.labelled, result.run_id)


def _compare(seen: Observed, settings: MonitorSettings, env: Environment) -> None:
    """Integrity, then drift, then (with labels) decay; sets the status."""
    result, champ = seen.result, seen.champion
    seen.reference = load_reference(env, champ)
    seen.profile = feature_profile(env, champ, seen.reference)
    problems = integrity_problems(seen.window, seen.profile)
    if problems:
        result.status = "data_integrity_failure"
        result.reasons += problems
        return
    predictions = prediction_profile(env, champ, seen.reference)
    current = seen.window.current(champ, seen.profile, predictions, settings.exact_max_rows)
    result.drift = compare(seen.profile, current, thresholds=DriftThresholds(psi_threshold=settings.psi_threshold),
                           prediction_profile=predictions)
    drift = drift_reasons(result.drift, settings)
    result.drift_detected = bool(drift)
    result.reasons += drift
    if settings.labels:
        joined = join_labels(seen.window, load_labels(settings.labels, env))  # one label per row, repeats refused
        seen.labelled, result.labels = joined.rows, joined.counts
        result.reasons += joined.notes()
        perf, notes = performance(champ, seen.labelled, settings)
        result.performance = perf
        result.reasons += notes
        if perf and perf.decayed:
            result.performance_decayed = True
            result.reasons.append(f"{perf.metric} {perf.holdout:.4f} -> {perf.current:.4f} "
                                  f"(drop {perf.drop:.4f} > {settings.metric_drop})")
    if result.drift_detected:
        result.status = "drift"
    elif result.performance_decayed:
        result.status = "performance_decay"


def integrity_problems(window: CapturedWindow, profile: ReferenceProfile) -> list[str]:
    """Why the window cannot be compared: a feature missing, or not numeric where the reference is."""
    return window.integrity_problems(profile)


def drift_reasons(report: DriftReport, settings: MonitorSettings) -> list[str]:
    """Why the window counts as drifted: enough features drifted, or any feature's PSI is too high."""
    reasons = []
    if report.drift_share >= settings.drift_share:
        reasons.append(f"{report.n_drifted}/{len(report.features)} features drifted "
                       f"(share {report.drift_share:.2f} >= {settings.drift_share})")
    psi_hits = [f.name for f in report.features if f.psi is not None and f.psi >= settings.psi_threshold]
    if psi_hits:
        reasons.append(f"PSI >= {settings.psi_threshold} on {', '.join(psi_hits)}")
    return reasons
