"""The gate: champion or challenger, decided on the same holdout for both models.

A new version becomes `champion` only if it passes the spec's floor and either there is no
champion yet or it beats the champion's metric on this holdout by MORE than the margin (a tie
never promotes). A champion that cannot be scored here (other features, a broken artifact) is
never replaced automatically.
"""

from __future__ import annotations

from typing import Any, Literal

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


def score_champion(
    client: Any, name: str, X: pd.DataFrame, y: pd.Series, metric: Metric, n_classes: int
) -> ChampionScore:
    """The current champion's metric on this holdout (its sklearn model, so probabilities count).

    Loads through MLflow's fluent API: call inside `Environment.tracking()`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return ChampionScore()  # no registered model, or no champion yet
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{current.version}").get_raw_model()
        return ChampionScore(version=current.version, value=score(model, X, y, metric, n_classes))
    except Exception as exc:  # a champion with other features, or a broken artifact: never auto-replace it
        return ChampionScore(version=current.version, error=f"{type(exc).__name__}: {exc}")


def beats(new: float, old: float, metric: Metric, margin: float) -> bool:
    """Strictly better by more than `margin`: equal scores never count as better."""
    return new > old + margin if metric.greater_is_better else new < old - margin


def passes_floor(value: float, metric: Metric, floor: float | None) -> bool:
    if floor is None:
        return True
    return value >= floor if metric.greater_is_better else value <= floor


def decide(new: float, champion: ChampionScore, metric: Metric, promotion: PromotionSpec) -> tuple[Decision, str]:
    """The alias for the new version and why."""
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
