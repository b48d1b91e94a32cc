"""Loading models as a trust boundary (workloads/serving/loading.py), on model directories saved here.

A pickle-based model whose unpickling creates a marker file stands for "runs code when loaded":
refused by default (the marker never appears), loaded when allowed (it does: the control). The
default path loads skops models with the project's allowlist, whatever the model file claims.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.serving.helpers import small_frame
from workloads.serving.loading import TRUSTED_TYPES, ModelRefused, load_trusted, pickle_switch


class RunsCodeWhenLoaded:
    """Unpickling this calls `Path.touch(marker)`: any code could run there instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def predict(self, X: Any) -> Any:  # sklearn-like, so MLflow's sklearn flavor takes it
        return [0] * len(X)

    def __reduce__(self) -> tuple[Any, tuple]:
        return (Path.touch, (self.marker,))


def sklearn_dir(tmp_path: Path, model: Any, fmt: str, **kwargs: Any) -> Path:
    import mlflow.sklearn

    path = tmp_path / f"model-{fmt}"
    # Known requirements: MLflow would otherwise load the model in a subprocess to infer them.
    mlflow.sklearn.save_model(model, path, serialization_format=fmt, pip_requirements=["scikit-learn"], **kwargs)
    return path


@pytest.fixture
def fitted() -> Any:
    from sklearn.linear_model import LogisticRegression

    X = small_frame(60, 1)[["x0", "x1", "x2"]]
    return LogisticRegression().fit(X, (X["x0"] > 0).astype(int)), X


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle"])
def test_pickle_models_are_refused_without_running_their_code(tmp_path: Path, fmt: str) -> None:
    import mlflow.pyfunc

    marker = tmp_path / "pwned"
    path = sklearn_dir(tmp_path, RunsCodeWhenLoaded(marker), fmt)
    assert not marker.exists()
    with pytest.raises(ModelRefused, match=f"saved as {fmt}: unpickling it runs code.*--pickle-allowed"):
        load_trusted(path, "models:/evil/1")
    assert not marker.exists()
    pickle_switch(False)  # MLflow's own guard, as the serving worker sets it
    with pytest.raises(Exception, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.pyfunc.load_model(str(path))
    assert not marker.exists()
    pickle_switch(True)  # the control: allowed, MLflow's loader runs the model's code
    mlflow.pyfunc.load_model(str(path))
    assert marker.exists()


def test_skops_models_load_with_the_projects_allowlist(tmp_path: Path, fitted: Any) -> None:
    model, X = fitted
    path = sklearn_dir(tmp_path, model, "skops", pyfunc_predict_fn="predict_proba")
    pickle_switch(False)
    loaded = load_trusted(path, "models:/ok/1")
    assert (loaded.predict(X) == model.predict_proba(X)).all()
    assert loaded.loader_module == "mlflow.sklearn"


def test_trusted_types_come_from_the_project_not_the_model_file(tmp_path: Path, fitted: Any) -> None:
    """A model that lists an extra type as trusted in its own MLmodel is refused all the same."""
    import operator

    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    _, X = fitted
    # A function reference inside the model: skops calls whatever the file names, if trusted.
    odd = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression()).fit(X, (X["x0"] > 0).astype(int))
    extra = sorted(set(skops.io.get_untrusted_types(data=skops.io.dumps(odd))) - TRUSTED_TYPES)
    assert extra, "the control needs a type outside the allowlist"
    path = sklearn_dir(tmp_path, odd, "skops", skops_trusted_types=skops.io.get_untrusted_types(
        data=skops.io.dumps(odd)))
    assert set(extra) <= set(yaml.safe_load((path / "MLmodel").read_text())["flavors"]["sklearn"]["skops_trusted_types"])
    with pytest.raises(ModelRefused, match="types outside the project's allowlist: " + extra[0].replace(".", r"\.")):
        load_trusted(path, "models:/odd/1")


def test_models_that_ship_code_or_another_loader_are_refused(tmp_path: Path, fitted: Any) -> None:
    model, _ = fitted
    path = sklearn_dir(tmp_path, model, "skops")
    meta = yaml.safe_load((path / "MLmodel").read_text())
    meta["flavors"]["python_function"]["code"] = "code"
    (path / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelRefused, match="ships code"):
        load_trusted(path, "models:/m/1")
    meta["flavors"]["python_function"].pop("code")
    meta["flavors"]["python_function"]["loader_module"] = "evil_loader"
    (path / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelRefused, match="not an sklearn model .*'evil_loader'"):
        load_trusted(path, "models:/m/1")
    meta["flavors"]["python_function"]["loader_module"] = "mlflow.sklearn"
    meta["flavors"]["python_function"]["model_path"] = "../../etc/passwd"
    (path / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(ModelRefused, match="not a file inside the model"):
        load_trusted(path, "models:/m/1")


def test_python_models_are_refused(tmp_path: Path) -> None:
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "py", python_model=Echo())
    with pytest.raises(ModelRefused, match="not an sklearn model"):
        load_trusted(tmp_path / "py", "models:/py/1")


def test_the_allowlist_covers_every_model_training_can_produce() -> None:
    """Every built-in family, for both tasks, as a plain pipeline and as served probabilities."""
    import warnings

    from skops.io import dumps, get_untrusted_types

    from workloads.data.sample import generate
    from workloads.training.models import FAMILIES, _estimator_class, build_pipeline
    from workloads.training.probabilities import ClassProbabilities

    warnings.filterwarnings("ignore")
    seen: set[str] = set()
    for task, target in (("classification", "churned"), ("regression", "monthly_spend")):
        data = generate(200, seed=1, target=target)
        X, y = data.drop(columns=["customer_id", target], errors="ignore"), data[target]
        for family in FAMILIES[task]:
            cls = _estimator_class(family, task)
            assert cls is not None, (family, task)
            pipeline = build_pipeline(X, cls()).fit(X, y)
            served = [pipeline, ClassProbabilities(pipeline)] if task == "classification" else [pipeline]
            for model in served:
                types = set(get_untrusted_types(data=dumps(model)))
                assert types <= TRUSTED_TYPES, (family, task, types - TRUSTED_TYPES)
                seen |= types
    assert seen == TRUSTED_TYPES, f"allowlisted but never produced: {TRUSTED_TYPES - seen}"


def test_the_pickle_switch_sets_mlflows_guard() -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    pickle_switch(False)
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is False
    pickle_switch(True)
    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.get() is True


