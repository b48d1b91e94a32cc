"""Fixtures of the in-process serving tests."""

from __future__ import annotations

import pytest

import workloads  # noqa: F401 - telemetry off before mlflow is imported
from tests.serving.helpers import SMALL_NUMERIC, small_frame
from workloads.serving.model import LoadedModel


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A scaler + one-hot + logistic regression with a double/long/string signature, saved locally."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X = small_frame(300, 0)
    y = ((X["x0"] + X["n"] / 4 + (X["plan"] == "pro")) > 0.8).astype(int)
    pipe = Pipeline([("prep", ColumnTransformer([("num", StandardScaler(), SMALL_NUMERIC + ["n"]),
                                                 ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"])])),
                     ("clf", LogisticRegression())]).fit(X, y)
    path = tmp_path_factory.mktemp("model") / "m"
    mlflow.sklearn.save_model(pipe, path, signature=infer_signature(X, pipe.predict_proba(X)),
                              pyfunc_predict_fn="predict_proba")
    return LoadedModel.of(mlflow.pyfunc.load_model(str(path)), "m", "champion", "1")
