"""The gate: champion or challenger, decided on rows neither model was trained on.

A fresh training (no recent rows in its data): both models are scored on the job's holdout; the
new version becomes `champion` only if it passes the spec's floor and either there is no champion
yet or it beats the champion's metric there by MORE than the margin (a tie never promotes).

After drift (the data carries `recent_holdout` rows, workloads/data/partition.py): the labelled
captured rows held back from training decide. The challenger must
1. pass the floor on the recent rows,
2. beat the champion on the recent rows by more than `promotion.margin`, and
3. not forget: on the champion's own holdout rows (the `holdout` rows, which the champion never
   trained on and the challenger never sees) its metric may trail the champion's recorded holdout
   metric (`mlops.metric.value`, measured on exactly those rows) by at most
   `promotion.max_forgetting` (absolute; for lower-is-better metrics, exceed it by at most that).
The champion is only ever scored on rows it never trained on: the recent rows are captures
that are not in its dataset, the holdout rows are its own holdout.

A champion that cannot be scored (other features, a broken artifact) is never replaced automatically.
Both datasets' numbers are recorded: `mlops.gate.*` tags on the run and the version, `gate.*` metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from workloads.training.metrics import Metric, score
from workloads.training.spec import PromotionSpec

Decision = Literal["champion", "challenger"]
CHAMPION: Decision = "champion"
CHALLENGER: Decision = "challenger"


class ChampionScore(BaseModel):
    version: str | None = None
    value: float | None = None
    error: str | None = None


class Comparison(BaseModel):
    """Both models' metric on one set of rows."""

    rows: int
    challenger: float
    champion: float | None = None  # scored on these rows (None: no champion, or it could not be scored)
    champion_recorded: float | None = None  # the champion's `mlops.metric.value` (the holdout guard)


class GateReport(BaseModel):
    metric: str
    decision: Decision
    reason: str
    champion_version: str | None = None
    holdout: Comparison  # the rows not trained on (after drift: the champion's own holdout rows)
    recent: Comparison | None = None  # after drift: the labelled captured rows held back

    def tags(self) -> dict[str, str]:
        tags = {"mlops.decision": self.decision, "mlops.decision.reason": self.reason, "mlops.gate.metric": self.metric}
        if self.champion_version is not None:
            tags["mlops.gate.champion_version"] = self.champion_version
        for name, comparison in (("holdout", self.holdout), ("recent", self.recent)):
            if comparison is not None:
                tags |= {f"mlops.gate.{name}.{k}": str(v) for k, v in comparison.model_dump().items() if v is not None}
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> GateReport | None:
        """The report recorded on a model version or run (`tags()`); None for versions without one."""
        if "mlops.gate.metric" not in tags or "mlops.decision" not in tags:
            return None
        found: dict[str, dict[str, str]] = {}
        for key, value in tags.items():
            if key.startswith("mlops.gate.") and key.count(".") == 3:
                _, _, name, field = key.split(".")
                found.setdefault(name, {})[field] = value
        return cls.model_validate({
            "metric": tags["mlops.gate.metric"], "decision": tags["mlops.decision"],
            "reason": tags.get("mlops.decision.reason", ""),
            "champion_version": tags.get("mlops.gate.champion_version"), **found})

    def metrics(self) -> dict[str, float]:
        return {f"gate.{k.removeprefix('mlops.gate.')}": float(v) for k, v in self.tags().items()
                if k.startswith("mlops.gate.") and k.count(".") == 3}


@dataclass(frozen=True)
class Current:
    """The current champion as the gate sees it."""

    version: str | None = None
    model: Any = None
    recorded: float | None = None  # its recorded holdout metric, when recorded with the same metric
    error: str | None = None


def current_champion(client: Any, name: str, metric: Metric) -> Current:
    """The champion's model and recorded metric (MLflow's fluent API: call inside `Environment.tracking()`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return Current()  # no registered model, or no champion yet
    tags = mv.tags or {}
    recorded = float(tags["mlops.metric.value"]) if tags.get("mlops.metric") == metric.name \
        and "mlops.metric.value" in tags else None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}").get_raw_model()
    except Exception as exc:  # a broken artifact: never auto-replace it
        return Current(version=str(mv.version), recorded=recorded, error=f"{type(exc).__name__}: {exc}")
    return Current(version=str(mv.version), model=model, recorded=recorded)


def _scored(model: Any, X: pd.DataFrame, y: pd.Series, metric: Metric, n_classes: int,
            positive: Any) -> tuple[float | None, str | None]:
    try:
        return score(model, X, y, metric, n_classes, positive), None
    except Exception as exc:  # a champion with other features: never auto-replace it
        return None, f"{type(exc).__name__}: {exc}"


def judge(champion: Current, challenger: Any, X: pd.DataFrame, y: pd.Series, recent: np.ndarray,
          metric: Metric, n_classes: int, promotion: PromotionSpec, positive: Any = None) -> GateReport:
    """Score both models on the holdout rows (and the recent ones, after drift) and decide.

    `positive`: the binary target's positive class of the new model's spec; both models are
    scored with it, so a spec that changes it compares like with like.
    """
    error = champion.error
    comparisons: dict[str, Comparison] = {}
    for name, rows in (("holdout", ~recent), ("recent", recent)):
        if not rows.any():
            continue
        mine, undefined = _scored(challenger, X[rows], y[rows], metric, n_classes, positive)
        if mine is None:  # e.g. roc_auc on recent rows of one class: no judgement possible
            if name == "holdout":
                raise ValueError(f"{metric.name} of the new model on its holdout: {undefined}")
            return GateReport(metric=metric.name, decision=CHALLENGER, champion_version=champion.version,
                              holdout=comparisons["holdout"], reason=f"{metric.name} is undefined on the "
                              f"{int(rows.sum())} recent held-back rows ({undefined})")
        theirs = None
        if champion.model is not None:
            theirs, problem = _scored(champion.model, X[rows], y[rows], metric, n_classes, positive)
            error = error or problem
        comparisons[name] = Comparison(rows=int(rows.sum()), challenger=mine, champion=theirs)
    holdout, after_drift = comparisons["holdout"], comparisons.get("recent")
    if after_drift is not None:
        holdout.champion_recorded = champion.recorded
        decision, reason = decide_after_drift(holdout, after_drift, champion.version, error, metric, promotion)
    else:
        decision, reason = decide(holdout.challenger, ChampionScore(
            version=champion.version, value=holdout.champion, error=error), metric, promotion)
    return GateReport(metric=metric.name, decision=decision, reason=reason, champion_version=champion.version,
                      holdout=holdout, recent=after_drift)


def beats(new: float, old: float, metric: Metric, margin: float) -> bool:
    """Strictly better by more than `margin`: equal scores never count as better."""
    return new > old + margin if metric.greater_is_better else new < old - margin


def passes_floor(value: float, metric: Metric, floor: float | None) -> bool:
    if floor is None:
        return True
    return value >= floor if metric.greater_is_better else value <= floor


def decide(new: float, champion: ChampionScore, metric: Metric, promotion: PromotionSpec) -> tuple[Decision, str]:
    """A fresh training: the alias for the new version and why, both scored on the same holdout."""
    if not passes_floor(new, metric, promotion.floor):
        return CHALLENGER, f"{metric.name} {new:.4f} does not pass the floor {promotion.floor}"
    if champion.version is None:
        return CHAMPION, "no champion yet" + ("" if promotion.floor is None else f"; passes the floor {promotion.floor}")
    if champion.value is None:
        return CHALLENGER, f"champion v{champion.version} could not be scored on this holdout ({champion.error})"
    wins = beats(new, champion.value, metric, promotion.margin)
    reason = (f"{metric.name} {new:.4f} {'beats' if wins else 'does not beat'} champion v{champion.version} "
              f"({champion.value:.4f}) by more than the margin {promotion.margin}")
    return (CHAMPION if wins else CHALLENGER), reason


def decide_after_drift(holdout: Comparison, recent: Comparison, version: str | None, error: str | None,
                       metric: Metric, promotion: PromotionSpec) -> tuple[Decision, str]:
    """After drift: win on the recent held-back rows, without forgetting the champion's holdout."""
    where = f"on {recent.rows} recent held-back rows"
    if not passes_floor(recent.challenger, metric, promotion.floor):
        return CHALLENGER, f"{metric.name} {recent.challenger:.4f} {where} does not pass the floor {promotion.floor}"
    if version is None:
        return CHAMPION, f"no champion yet; {metric.name} {recent.challenger:.4f} {where}"
    if recent.champion is None or error is not None:
        return CHALLENGER, f"champion v{version} could not be scored ({error})"
    guard = holdout.champion_recorded if holdout.champion_recorded is not None else holdout.champion
    assert guard is not None  # scored above, or the error branch returned
    limit = guard - promotion.max_forgetting if metric.greater_is_better else guard + promotion.max_forgetting
    kept = f"{holdout.challenger:.4f} on the champion's {holdout.rows} holdout rows (its recorded {guard:.4f})"
    if not passes_floor(holdout.challenger, metric, limit):
        return CHALLENGER, f"forgets: {kept} trails by more than max_forgetting {promotion.max_forgetting}"
    wins = beats(recent.challenger, recent.champion, metric, promotion.margin)
    return (CHAMPION if wins else CHALLENGER), (
        f"{metric.name} {recent.challenger:.4f} {where} {'beats' if wins else 'does not beat'} champion v{version} "
        f"({recent.champion:.4f}) by more than the margin {promotion.margin}; {kept}, within max_forgetting "
        f"{promotion.max_forgetting}")
