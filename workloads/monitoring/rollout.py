"""Shadow and canary, judged by monitoring: promote the challenger or roll it back.

For an endpoint with a rollout (`--rollout shadow|canary`, workloads/serving/rollout.py) the monitor
compares `champion` and `challenger` on the same captured window:

- rows each version answered (canary: `_model_version`; shadow: the challenger scored every row it
  has a `_shadow_version` on), and the drift of each version's inputs against the champion's
  reference profile (a canary's split should see the same traffic on both sides);
- shadow: agreement, the share of rows where both gave the same class;
- with delayed labels, each version's metric (the champion's `mlops.metric`) on the labelled rows
  it answered, at least `rollout_min_labelled_rows` per version.

Decision (workloads/training/gate.py's `beats`): promote when the challenger's metric beats the
champion's by more than `rollout_margin`; roll back when the champion's beats the challenger's;
otherwise wait for more labels. Applying it takes the retraining lock (lock.py): a promotion also
waits out the retraining cooldown, a rollback never does (a bad challenger goes at once). Both
write the cooldown record. Promotion points `champion` at the challenger's version, keeps the old
champion as `previous` and deletes `challenger`; rollback deletes `challenger`. Serving follows on
its next alias poll or reload. The decision is tagged on the monitoring run and on the challenger's
version (`mlops.rollout.*`, read by the audit report).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from workloads.environment import Environment
from workloads.monitoring.drift import DriftThresholds, compare
from workloads.monitoring.lock import CooldownRecord, RetrainLock
from workloads.monitoring.profile import ReferenceProfile
from workloads.monitoring.reference import Champion, resolve_champion
from workloads.monitoring.result import MonitorError, MonitorResult, RolloutOutcome, VersionStats
from workloads.monitoring.stream import TooLarge
from workloads.monitoring.window import CapturedWindow
from workloads.settings import CHALLENGER_ALIAS, MonitorSettings

PREVIOUS_ALIAS = "previous"
ROWS_PER_VERSION = 200_000  # inputs kept per version for its drift (a uniform prefix of the window is enough)
_META = ["_model_version", "_prediction", "_shadow_version", "_shadow_prediction"]


def judge(client: Any, settings: MonitorSettings, champ: Champion, window: CapturedWindow,
          labelled: pd.DataFrame, profile: ReferenceProfile | None) -> RolloutOutcome:
    """Compare champion and challenger on the window; decide (nothing is changed here)."""
    try:
        challenger = resolve_champion(client, settings.model, CHALLENGER_ALIAS)
    except MonitorError as exc:
        return RolloutOutcome(mode=settings.rollout, decision="none", reason=f"no challenger: {exc}")
    if challenger.version == champ.version:
        return RolloutOutcome(mode=settings.rollout, decision="none",
                              reason=f"challenger and champion are both v{champ.version}")
    shadow = settings.rollout == "shadow"
    inputs, agreement = _read(window, champ, challenger, shadow)
    stats = {}
    for side, model in (("champion", champ), ("challenger", challenger)):
        rows = _answered(labelled, model.version, shadow and side == "challenger")
        stats[side] = VersionStats(version=model.version, rows=len(inputs[model.version]), labelled_rows=len(rows),
                                   drift_share=_drift_share(profile, inputs[model.version], settings))
        if len(rows) >= settings.rollout_min_labelled_rows:
            stats[side].metric = _metric(model, rows, champ.tags.get("mlops.metric"))
    decision, reason = decide(stats["champion"], stats["challenger"], champ.tags.get("mlops.metric"), settings)
    return RolloutOutcome(mode=settings.rollout, decision=decision, reason=reason, metric=champ.tags.get("mlops.metric"),
                          champion=stats["champion"], challenger=stats["challenger"], agreement=agreement)


def decide(champion: VersionStats, challenger: VersionStats, metric_name: str | None,
           settings: MonitorSettings) -> tuple[Any, str]:
    from workloads.training.gate import beats
    from workloads.training.metrics import METRICS

    short = [s for s in (champion, challenger) if s.metric is None]
    if short or metric_name not in METRICS:
        named = ", ".join(f"v{s.version} {s.labelled_rows}" for s in short)
        return "wait", (f"labelled rows per version below {settings.rollout_min_labelled_rows} ({named})" if short
                        else f"the champion names no known metric ({metric_name!r})")
    assert champion.metric is not None and challenger.metric is not None
    metric = METRICS[metric_name]
    sides = (f"{metric_name} challenger v{challenger.version} {challenger.metric:.4f} on {challenger.labelled_rows} "
             f"rows vs champion v{champion.version} {champion.metric:.4f} on {champion.labelled_rows} rows")
    if beats(challenger.metric, champion.metric, metric, settings.rollout_margin):
        return "promote", f"{sides}: beats it by more than {settings.rollout_margin}"
    if beats(champion.metric, challenger.metric, metric, 0.0):
        return "roll_back", f"{sides}: worse"
    return "wait", f"{sides}: not better by more than {settings.rollout_margin} yet"


def apply(outcome: RolloutOutcome, client: Any, settings: MonitorSettings, env: Environment, run_id: str) -> None:
    """Carry out a promote or roll_back under the retraining lock; tag run and version either way."""
    if outcome.decision in ("promote", "roll_back"):
        bucket = env.outputs.capture_bucket
        lock = RetrainLock(env.s3, bucket, settings.endpoint, timedelta(hours=settings.lock_stale_hours))
        if not lock.acquire():
            outcome.note = f"not applied: the endpoint's lock is held by {(lock.holder or {}).get('owner')}"
        else:
            try:
                _apply_locked(outcome, client, settings, env, run_id, lock.owner)
            finally:
                lock.release()
    _record(outcome, client, settings, run_id)


def _apply_locked(outcome: RolloutOutcome, client: Any, settings: MonitorSettings, env: Environment, run_id: str,
                  owner: str) -> None:
    assert outcome.champion is not None and outcome.challenger is not None
    cooldown = CooldownRecord(env.s3, env.outputs.capture_bucket, settings.endpoint)
    waiting = cooldown.cooling_down(settings.cooldown_hours) if outcome.decision == "promote" else None
    if waiting:
        outcome.note = f"not applied: {waiting}"
        return
    name, new, old = settings.model, outcome.challenger.version, outcome.champion.version
    if outcome.decision == "promote":
        client.set_registered_model_alias(name, PREVIOUS_ALIAS, old)
        client.set_registered_model_alias(name, settings.alias, new)
    client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
    outcome.applied = True
    cooldown.write({"time": datetime.now(UTC).isoformat(), "monitor_run_id": run_id, "owner": owner,
                    "state": "promoted" if outcome.decision == "promote" else "rolled_back", "version": new})


def _record(outcome: RolloutOutcome, client: Any, settings: MonitorSettings, run_id: str) -> None:
    """`mlops.rollout.*` tags and `rollout.*` metrics on the run; the decision on the challenger's version."""
    from mlflow.entities import Metric, RunTag

    tags = {"mlops.rollout.mode": outcome.mode, "mlops.rollout.decision": outcome.decision,
            "mlops.rollout.applied": str(outcome.applied).lower(), "mlops.rollout.reason": outcome.reason[:5000]}
    now, metrics = int(datetime.now(UTC).timestamp() * 1000), {"rollout.agreement": outcome.agreement}
    for side in ("champion", "challenger"):
        stats: VersionStats | None = getattr(outcome, side)
        if stats is not None:
            tags[f"mlops.rollout.{side}_version"] = stats.version
            metrics |= {f"rollout.{side}.metric": stats.metric, f"rollout.{side}.labelled_rows": stats.labelled_rows,
                        f"rollout.{side}.drift_share": stats.drift_share}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
    if outcome.applied and outcome.challenger is not None:
        verdict = "promoted" if outcome.decision == "promote" else "rolled_back"
        for key, value in {"mlops.rollout.decision": verdict, "mlops.rollout.monitor_run_id": run_id,
                           "mlops.rollout.reason": outcome.reason[:5000]}.items():
            client.set_model_version_tag(settings.model, outcome.challenger.version, key, value)


def alert_fields(result: MonitorResult) -> dict[str, Any]:
    """What an alert says about the rollout: which decision, on which versions, applied or not."""
    r = result.rollout
    if r is None or r.decision == "none":
        return {}
    return {"rollout": {"mode": r.mode, "decision": r.decision, "applied": r.applied, "reason": r.reason,
                        "note": r.note, "champion_version": r.champion.version if r.champion else None,
                        "challenger_version": r.challenger.version if r.challenger else None}}


# -- reading the window -----------------------------------------------------------------------


def _read(window: CapturedWindow, champ: Champion, challenger: Champion, shadow: bool
          ) -> tuple[dict[str, pd.DataFrame], float | None]:
    """Per version the inputs it answered (capped), and in shadow mode the agreement rate."""
    features = sorted(set(champ.features) | set(challenger.features))
    kept: dict[str, list[pd.DataFrame]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    agree = compared = 0
    classification = champ.tags.get("mlops.task") == "classification"
    for part in window.parts:
        try:
            for table in window.read(part, features + _META):
                frame = table.to_pandas()
                for version, column in ((champ.version, "_model_version"), (challenger.version, "_shadow_version"
                                                                             if shadow else "_model_version")):
                    rows = frame[frame[column].astype(str) == version]
                    if counts[version] < ROWS_PER_VERSION and len(rows):
                        kept[version].append(rows[features].iloc[:ROWS_PER_VERSION - counts[version]])
                    counts[version] += len(rows)
                if shadow:
                    both = frame[(frame["_shadow_version"].astype(str) == challenger.version)
                                 & frame["_shadow_prediction"].notna() & frame["_prediction"].notna()]
                    agree += int(_agree(both["_prediction"], both["_shadow_prediction"], classification).sum())
                    compared += len(both)
        except TooLarge:
            window.skipped.append((part.key, "too large to read in bounds"))
    inputs = {v: pd.concat(kept[v], ignore_index=True) if kept[v] else pd.DataFrame(columns=features)
              for v in (champ.version, challenger.version)}
    return inputs, (agree / compared if shadow and compared and classification else None)


def _agree(a: pd.Series, b: pd.Series, classification: bool) -> np.ndarray:
    """Same class: labels compared as they are, probabilities on the 0.5 threshold."""
    if not classification:
        return np.zeros(len(a), bool)
    x, y = pd.to_numeric(a, errors="coerce").to_numpy(float), pd.to_numeric(b, errors="coerce").to_numpy(float)
    probabilities = bool(len(x)) and bool(((x > 0) & (x < 1)).any() or ((y > 0) & (y < 1)).any())
    return (x >= 0.5) == (y >= 0.5) if probabilities else x == y


def _answered(labelled: pd.DataFrame, version: str, shadow_side: bool) -> pd.DataFrame:
    column = "_shadow_version" if shadow_side else "_model_version"
    if labelled.empty or column not in labelled.columns:
        return pd.DataFrame()
    return labelled[labelled[column].astype(str) == version]


def _metric(model: Champion, rows: pd.DataFrame, metric_name: str | None) -> float | None:
    """The version's metric on the labelled rows it answered (reloaded and re-scored: what it answered)."""
    import mlflow

    from workloads.training.metrics import METRICS, score

    if metric_name not in METRICS:
        return None
    metric = METRICS[metric_name]
    y = rows["label"]
    n_classes = int(y.nunique()) if metric.task == "classification" else 0
    try:
        return score(mlflow.sklearn.load_model(model.uri), rows[model.features], y, metric, max(n_classes, 2))
    except ValueError:  # e.g. one class only among its labelled rows
        return None


def _drift_share(profile: ReferenceProfile | None, inputs: pd.DataFrame, settings: MonitorSettings) -> float | None:
    if profile is None or len(inputs) < settings.min_rows or not set(profile.columns) <= set(inputs.columns):
        return None
    report = compare(profile, inputs[list(profile.columns)],
                     thresholds=DriftThresholds(psi_threshold=settings.psi_threshold))
    return report.drift_share
