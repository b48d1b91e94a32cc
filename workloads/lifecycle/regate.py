"""The target's gate for a promoted version: the training package's gate, on the target's data.

The target's `champion` is the model to beat, on the rows that judge it in the target: its own
training dataset (read from the target's data bucket) prepared with its own logged spec
(`spec.yaml`), so the same split, the same metric and the same promotion rules as when the
target trained it (workloads/training/gate.py: `current_champion`, `judge`). The promoted version
never saw those rows unless both environments hold the same data; when the datasets are the same
but split differently, the reason says so (some holdout rows may then be in its training rows).

No champion in the target: the version becomes champion if its recorded holdout metric in the
source passes its spec's floor; its own numbers are recorded (there is nothing to compare with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workloads.data import dataset
from workloads.environment import Environment
from workloads.errors import MlopsError, UsageError
from workloads.lifecycle.bundle import Exported
from workloads.training.gate import (
    CHALLENGER,
    CHAMPION,
    Comparison,
    GateReport,
    current_champion,
    judge,
    passes_floor,
)
from workloads.training.metrics import METRICS
from workloads.training.prepare import prepare
from workloads.training.spec import TrainingSpec

SPLIT_TAGS = ("mlops.split.seed", "mlops.split.holdout_fraction")


class PromotionError(MlopsError):
    """A promotion could not finish; nothing was left registered in the target."""

    kind = "promotion failed"


def target_gate(client: Any, env: Environment, source: Exported, model_dir: Path, run_dir: Path) -> GateReport:
    """Decide the promoted version's alias in `env` (call inside `env.tracking()`)."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(source.model, CHAMPION)
    except MlflowException:
        return _first(env, source, run_dir)
    import mlflow

    spec = TrainingSpec.parse(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{champion.run_id}/spec.yaml")),
                              f"{source.model} v{champion.version} spec.yaml")
    tags = dict(champion.tags or {})
    prep = prepare(spec, env, dataset.load(tags["mlops.dataset.uri"], env))
    current = current_champion(client, source.model, prep.metric)
    challenger = mlflow.pyfunc.load_model(str(model_dir)).get_raw_model()
    try:
        report = judge(current, challenger, prep.X_hold, prep.y_hold, prep.recent, prep.metric, prep.n_classes,
                       spec.promotion, positive=prep.target.positive)
    except ValueError as exc:  # the promoted model cannot score the target's rows at all
        raise PromotionError(f"{source.label} cannot be scored on {env.outputs.environment}'s holdout: {exc}") \
            from None
    where = (f"on {env.outputs.environment}'s data (dataset {tags.get('mlops.dataset.digest', '?')[:12]}, "
             f"champion v{champion.version}'s split)")
    return report.model_copy(update={"reason": f"{where}: {report.reason}{_overlap(source, tags)}"})


def _first(env: Environment, source: Exported, run_dir: Path) -> GateReport:
    """No champion in the target: champion if the version's recorded holdout metric passes its floor."""
    tags = source.version_tags
    if "mlops.metric.value" not in tags or tags.get("mlops.metric") not in METRICS:
        raise UsageError(f"{source.label} has no recorded holdout metric (tags mlops.metric, mlops.metric.value): "
                         "only versions registered by `mlops train` can be promoted")
    metric, value = METRICS[tags["mlops.metric"]], float(tags["mlops.metric.value"])
    spec_file = run_dir / "spec.yaml"
    floor = TrainingSpec.parse(yaml.safe_load(spec_file.read_text())).promotion.floor if spec_file.is_file() else None
    holdout = Comparison(rows=int(source.params.get("n_holdout", 0)), challenger=value)
    recorded = f"its {metric.name} {value:.4f} on its holdout in {source.environment}"
    if not passes_floor(value, metric, floor):
        return GateReport(metric=metric.name, decision=CHALLENGER, holdout=holdout,
                          reason=f"no champion in {env.outputs.environment} yet, but {recorded} does not pass "
                                 f"the floor {floor}")
    return GateReport(metric=metric.name, decision=CHAMPION, holdout=holdout,
                      reason=f"no champion in {env.outputs.environment} yet; {recorded}")


def _overlap(source: Exported, champion_tags: dict[str, str]) -> str:
    """A warning when both trained on the same dataset but split it differently."""
    mine = source.version_tags
    same_data = mine.get("mlops.dataset.digest") == champion_tags.get("mlops.dataset.digest")
    if same_data and any(mine.get(t) != champion_tags.get(t) for t in SPLIT_TAGS):
        return ("; note: the promoted version trained on the same dataset with another split, so some of these "
                "holdout rows may be among its training rows")
    return ""
