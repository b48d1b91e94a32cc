"""What a training job writes to MLflow: its inputs, its candidates (one nested run each), the model.

All of it through one `Environment`: `tracked(env)` points MLflow's fluent API at it for the
job and restores the process afterwards; clients come from `env.mlflow_client()`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from workloads.data.dataset import DatasetVersion
from workloads.environment import Environment
from workloads.training.metrics import Metric
from workloads.training.search import Candidate
from workloads.training.spec import TrainingSpec

MODEL_ARTIFACT = "model"
CANDIDATES_ARTIFACT = "candidates.json"
_NO_RUN_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


@contextmanager
def tracked(env: Environment) -> Iterator[None]:
    """MLflow's fluent API on `env` for the block, without the run links MLflow prints to stdout
    when a run ends (they would corrupt `--json` output); both restored afterwards."""
    saved = os.environ.get(_NO_RUN_LINKS)
    os.environ[_NO_RUN_LINKS] = "true"  # read by MLflow on each run end; it has no other switch
    try:
        with env.tracking():
            yield
    finally:
        if saved is None:
            os.environ.pop(_NO_RUN_LINKS, None)
        else:
            os.environ[_NO_RUN_LINKS] = saved


def experiment_id(client: Any, name: str) -> str:
    """The experiment's id, created when missing (another job may create it at the same time)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name))
        except MlflowException as exc:  # lost the race: the other job's experiment is the one
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    return str(found.experiment_id)


def log_inputs(spec: TrainingSpec, df: pd.DataFrame, version: DatasetVersion, schema: dict[str, Any]) -> None:
    """The active run's dataset input (by digest and URI), its spec and the schema the data passed."""
    import mlflow

    with warnings.catch_warnings():  # the dataset's own schema is informational; ints are fine there
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(df, source=version.uri, name=spec.dataset.name, targets=spec.target,
                                          digest=version.digest)
        mlflow.log_input(dataset, context="training")
    mlflow.log_text(spec.to_yaml(), "spec.yaml")
    mlflow.log_dict(schema, "schema.json")


def log_candidates(
    client: Any, run_id: str, experiment_id: str, candidates: list[Candidate], metric: Metric,
    tags: dict[str, str] | None = None,
) -> None:
    """One nested run per candidate, each written with a single log_batch call."""
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.entities import Param, RunTag

    now = int(time.time() * 1000)
    for rank, c in enumerate(candidates, start=1):
        child = client.create_run(
            experiment_id,
            tags={"mlflow.parentRunId": run_id, "mlflow.runName": f"{c.family}-{rank}", "mlops.family": c.family,
                  "mlops.candidate.index": str(c.index), **(tags or {})},
        )
        client.log_batch(
            child.info.run_id,
            metrics=[
                MlflowMetric(f"cv.{metric.name}", c.cv_score, now, 0),
                MlflowMetric(f"cv.{metric.name}.std", c.cv_std, now, 0),
                MlflowMetric("fit_seconds", c.fit_seconds, now, 0),
                MlflowMetric("rank", rank, now, 0),
            ],
            params=[Param("family", c.family)] + [Param(k, str(v)) for k, v in c.params.items()],
            tags=[RunTag("mlops.candidate.rank", str(rank))],
        )
        client.set_terminated(child.info.run_id)


def log_model(model: Any, predict_fn: str, example: pd.DataFrame) -> Any:
    """The fitted model as the active run's `model` (skops, signature, input example); its ModelInfo.

    `predict_fn` is what the pyfunc's predict calls (`predict`, or `predict_proba` for a model that
    serves probabilities, probabilities.py); the signature's outputs are what it returns.
    """
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.utils.requirements_utils import _get_pinned_requirement
    from skops.io import dumps as skops_dumps
    from skops.io import get_untrusted_types

    # Integer features stay integers in the signature (what clients send); MLflow's hint
    # about missing values in integer columns is noise in a job log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        return mlflow.sklearn.log_model(
            model, name=MODEL_ARTIFACT, signature=infer_signature(example, getattr(model, predict_fn)(example)),
            input_example=example, pyfunc_predict_fn=predict_fn,
            # skops, not pickle: loading cannot run arbitrary code. skops still asks which of the
            # model's types to trust (numpy dtypes, gradient-boosting trees): exactly those of the
            # model this job just fitted, recorded with it; loaders only take models from our registry.
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=get_untrusted_types(data=skops_dumps(model)),
            # Known requirements: mlflow's inference imports the model in a subprocess (4 s here).
            pip_requirements=[
                *mlflow.sklearn.get_default_pip_requirements(include_skops=True),
                *(_get_pinned_requirement(p) for p in ("numpy", "pandas", "scipy")),
            ],
        )
