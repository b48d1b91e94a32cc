"""Loading a registered model as a trust boundary: whoever can write to the registry must not be
able to run code in the serving pods.

MLflow's loaders run code from the model: pickle and cloudpickle files, a `loader_module` or
`code` directory named by the model's MLmodel file, and even skops files, whose list of trusted
types MLflow reads from the model itself. MLflow 3.17's `MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`
refuses the pickle-based flavors (sklearn of every format, pyfunc python models, pytorch,
tensorflow, statsmodels, ...) but not a custom loader module. So by default `mlops serve` loads
only what training logs (workloads/training/tracking.py): the sklearn flavor in skops format,
through MLflow's pyfunc wrapper, with no code paths, and skops trusting only TRUSTED_TYPES
below (written here, reviewed with the code; never the model file's list). Anything else is
refused with a ModelRefused that says what it is. `--pickle-allowed` (stack key
`serving.endpoints[].pickleAllowed`) restores MLflow's own loader for every flavor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workloads.errors import MlopsError

PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
# Types beyond skops' own defaults that the models training produces hold (every built-in family,
# tests/serving/test_loading.py keeps this complete): each is data, not code.
TRUSTED_TYPES = frozenset({
    "numpy.dtype",
    "sklearn.tree._tree.Tree",  # random forests, extra trees
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # histogram gradient boosting
    "workloads.training.probabilities.ClassProbabilities",  # `predict: proba` models
})


class ModelRefused(MlopsError):
    """The model could run code when loaded, and the endpoint does not allow that."""


def pickle_switch(allowed: bool) -> None:
    """MLflow's own guard, set for this serving process (MLflow reads it at every load): off unless allowed."""
    os.environ[PICKLE_ENV] = "true" if allowed else "false"


def load_pyfunc(uri: str, pickle_allowed: bool) -> Any:
    """A pyfunc model from `uri` (resolved by the caller's tracking context); refused unless trusted."""
    import mlflow.artifacts
    import mlflow.pyfunc

    if pickle_allowed:
        return mlflow.pyfunc.load_model(uri)
    return load_trusted(Path(mlflow.artifacts.download_artifacts(uri)), uri)


def load_trusted(path: Path, uri: str) -> Any:
    """An sklearn/skops model directory as a PyFuncModel, skops trusting TRUSTED_TYPES only."""
    import skops.io
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel
    from mlflow.sklearn import _SklearnModelWrapper

    meta = Model.load(str(path / "MLmodel"))
    pyfunc, sklearn = meta.flavors.get("python_function") or {}, meta.flavors.get("sklearn") or {}
    refuse = _why_refused(pyfunc, sklearn, uri)
    if refuse:
        raise ModelRefused(f"{refuse}; serving loads only sklearn models saved with skops (what `mlops train` "
                           "logs). Allow loading code from the registry with --pickle-allowed "
                           "(serving.endpoints[].pickleAllowed) only if every registry writer is trusted")
    file = _inside(path, pyfunc["model_path"], uri)
    untrusted = sorted(set(skops.io.get_untrusted_types(file=file)) - TRUSTED_TYPES)
    if untrusted:
        raise ModelRefused(f"{uri}: the skops file holds types outside the project's allowlist: "
                           f"{', '.join(untrusted)} (workloads/serving/loading.py TRUSTED_TYPES)")
    model = skops.io.load(file, trusted=sorted(TRUSTED_TYPES))
    return PyFuncModel(model_meta=meta, model_impl=_SklearnModelWrapper(model),
                       predict_fn=pyfunc.get("predict_fn", "predict"), model_id=meta.model_id)


def _why_refused(pyfunc: dict, sklearn: dict, uri: str) -> str | None:
    if pyfunc.get("loader_module") != "mlflow.sklearn" or not sklearn:
        return f"{uri} is not an sklearn model (loader {pyfunc.get('loader_module')!r}): its loader runs its code"
    if pyfunc.get("code") or sklearn.get("code"):
        return f"{uri} ships code ({pyfunc.get('code') or sklearn.get('code')!r}) that loading would import"
    fmt = sklearn.get("serialization_format", "pickle")
    if fmt != "skops":
        return f"{uri} is saved as {fmt}: unpickling it runs code from the model file"
    return None


def _inside(root: Path, relative: str, uri: str) -> Path:
    """The model file, which must live inside the model directory (no `..`, no absolute path)."""
    file = (root / relative).resolve()
    if not file.is_relative_to(root.resolve()) or not file.is_file():
        raise ModelRefused(f"{uri}: model_path {relative!r} is not a file inside the model")
    return file
