"""What the window is compared against: the champion, its training data and their drift profiles.

The champion is `models:/<model>@<alias>`; its lineage tags (set by `mlops train`) name the
dataset it was trained on, the target and the task. Two profiles are cached in the capture
bucket (profile.py), both keyed by the dataset's digest: the features' profile (by the hash
of the feature names) and the champion's predictions on its own holdout rows (by the hash of
the model version), the baseline for prediction drift: the same column capture keeps as
`_prediction` (workloads/capture/table.py), so both sides of the comparison are one quantity.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from workloads import layout
from workloads.capture.table import _prediction_column
from workloads.data import dataset as datasets
from workloads.data import missing
from workloads.environment import Environment
from workloads.monitoring import profile as profiles
from workloads.monitoring.drift import PREDICTION
from workloads.monitoring.profile import ReferenceProfile
from workloads.monitoring.result import MonitorError

log = logging.getLogger(__name__)
LINEAGE_TAGS = ("mlops.dataset.uri", "mlops.target", "mlops.task")


class Champion(BaseModel):
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    features: list[str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def target(self) -> str:
        return self.tags["mlops.target"]

    @property
    def dataset_digest(self) -> str:
        """The dataset's content digest (versions registered before the digest tag: the URI's hash)."""
        return self.tags.get("mlops.dataset.digest") or _hash(self.tags["mlops.dataset.uri"])


def resolve_champion(client: Any, name: str, alias: str) -> Champion:
    """`models:/<name>@<alias>` with its lineage tags and input columns (MLflow's fluent API: in env.tracking())."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise MonitorError(f"models:/{name}@{alias} does not resolve: {exc.message}") from None
    tags = dict(mv.tags)
    missing = [t for t in LINEAGE_TAGS if t not in tags]
    if missing:
        raise MonitorError(f"{name} v{mv.version} lacks lineage tag(s) {missing}: was it registered by `mlops train`?")
    signature = mlflow.models.get_model_info(f"models:/{name}/{mv.version}").signature
    if signature is None:
        raise MonitorError(f"{name} v{mv.version} has no signature: its input columns are unknown")
    return Champion(name=name, version=str(mv.version), run_id=mv.run_id, tags=tags,
                    features=list(signature.inputs.input_names()))


def load_reference(env: Environment, champ: Champion) -> pd.DataFrame:
    """The dataset the champion was trained on."""
    return datasets.load(champ.tags["mlops.dataset.uri"], env)


def feature_profile(env: Environment, champ: Champion, reference: pd.DataFrame) -> ReferenceProfile:
    key = layout.profile_key(champ.dataset_digest, _hash("\0".join(champ.features)))
    return profiles.cached(env.s3, env.outputs.capture_bucket, key, lambda: ReferenceProfile.build(
        reference[champ.features], meta={"dataset.uri": champ.tags["mlops.dataset.uri"]}))


def prediction_profile(env: Environment, champ: Champion, reference: pd.DataFrame) -> ReferenceProfile:
    key = profiles.prediction_profile_key(champ.dataset_digest, champ.name, champ.version)
    return profiles.cached(env.s3, env.outputs.capture_bucket, key, lambda: _predictions(champ, reference))


def as_signature_types(X: pd.DataFrame, model: Any) -> pd.DataFrame:
    """Numeric columns cast to the model signature's types: MLflow's schema enforcement refuses
    int64 -> double and float64 -> long, and Parquet or CSV may hand back either."""
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return X
    casts = {}
    for name, dtype in zip(schema.input_names(), schema.input_types(), strict=False):
        target = getattr(dtype, "to_numpy", lambda: None)()
        if name in X.columns and target is not None and target.kind in "if" and X[name].dtype != target:
            if target.kind == "f" or not X[name].isna().any():
                casts[name] = target
    return X.astype(casts) if casts else X


def _predictions(champ: Champion, reference: pd.DataFrame) -> ReferenceProfile:
    """The champion's predictions on its own holdout rows (what it scored unseen): the prediction baseline."""
    import mlflow

    rows = reference
    try:
        _, rows = datasets.split(
            reference, champ.target, classification=champ.tags["mlops.task"] == "classification",
            seed=int(champ.tags.get("mlops.split.seed", 0)),
            holdout_fraction=float(champ.tags.get("mlops.split.holdout_fraction", 0.2)),
        )
    except (ValueError, KeyError) as exc:  # not reproducible: fall back to every reference row
        log.warning("holdout split not reproducible (%s): prediction baseline uses all reference rows", exc)
    model = mlflow.pyfunc.load_model(champ.uri)
    X = as_signature_types(missing.normalized(rows[champ.features]), model)  # missing as serving hands it over
    return ReferenceProfile.build(pd.DataFrame({PREDICTION: baseline_column(model.predict(X), len(rows))}),
                                  meta={"model": champ.name, "version": champ.version})


def baseline_column(answers: Any, rows: int) -> np.ndarray:
    """The model's answers as capture stores them in `_prediction`: one value per row, a probability table's
    last column (the positive class), numbers as floats; class labels stay text (a categorical baseline,
    which prediction drift skips; casting them to float failed)."""
    values = _prediction_column(answers, rows)
    return values.astype(float) if values.dtype.kind in "biuf" else values.astype(str)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
