"""Shared pieces of the fault drills: one small registered churn model and one endpoint serving it.

Drills that kill a server start their own servers; the others share the session's local stack
(`local_env` in tests/conftest.py) and the endpoint below. Endpoints are started with the
serving tests' helper (`tests/serving/helpers.py::Endpoint`: a `mlops serve` subprocess on a
free 127.0.0.1 port, stopped by its pid).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.serving.helpers import Endpoint
from workloads.environment import Environment

MODEL = "drill-churn"
TARGET = "churned"


def tiny_spec(name: str, source: str | None = None, **search: object) -> dict:
    """A training spec (as a dict) that trains in seconds on the sample data."""
    models = search.pop("models", [{"family": "logistic_regression", "search_space": {"C": [1.0]}}])
    return {
        "name": name, "dataset": {"name": name, **({"source": source} if source else {})}, "target": TARGET,
        "exclude": ["customer_id"], "metric": "roc_auc", "models": models,
        "search": {"n_iter": 1, "cv": 2, **search}, "seed": 3,
    }


@pytest.fixture(scope="session")
def churn_model(local_env: Environment) -> dict:
    """`drill-churn` v1 (champion), trained by `workloads.training.job.train` like any user model."""
    import mlflow.pyfunc

    from workloads.data.sample import generate
    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    result = train(TrainingSpec.parse(tiny_spec(MODEL)), local_env, data=generate(800, seed=5), progress=False)
    assert result.decision == "champion"
    with local_env.tracking():
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{result.version}")
    return {"name": MODEL, "version": result.version, "model": model}


def features(frame: pd.DataFrame) -> pd.DataFrame:
    """What a client sends: the sample rows without the id and the label."""
    return frame.drop(columns=["customer_id", TARGET], errors="ignore")


@pytest.fixture(scope="session")
def drill_endpoint(churn_model: dict, local_workdir: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[Endpoint]:
    """`mlops serve` for drill-churn@champion with capture on (the production default)."""
    log = tmp_path_factory.mktemp("drill-serve") / "serve.log"
    ep = Endpoint(MODEL, local_workdir, "--endpoint-name", "drill", "--capture-flush-seconds", "1", log=log)
    try:
        ep.wait_ready()
        yield ep
    finally:
        ep.stop()
