"""The trust boundary end to end: a registry write cannot run code in `mlops serve`.

A model registered in the session's tracking server whose unpickling creates a marker file (any
code could run there) is refused by a default endpoint, at start and at /reload, and the marker
never appears; an endpoint started with --pickle-allowed does run it (the control). With a reload
token configured, /reload without it is refused.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.serving.helpers import Endpoint
from tests.serving.test_loading import RunsCodeWhenLoaded
from workloads.environment import Environment

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def evil(local_stack, local_workdir, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A pickle-format sklearn model, registered and aliased champion: (its name, its marker file)."""
    import mlflow

    env = Environment(local_stack, local_workdir)
    name, marker = f"evil-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("trust") / "code-ran"
    with env.tracking():
        mlflow.set_experiment("serving-trust")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(RunsCodeWhenLoaded(marker), name="model", registered_model_name=name,
                                            serialization_format="pickle", pip_requirements=["scikit-learn"])
    env.mlflow_client().set_registered_model_alias(name, "champion", str(info.registered_model_version))
    assert not marker.exists()
    return name, marker


def test_pickle_model_is_refused_at_start_and_at_reload(evil: tuple[str, Path], local_workdir: Path,
                                                        tmp_path: Path) -> None:
    name, marker = evil
    ep = Endpoint(name, local_workdir, "--no-capture", log=tmp_path / "serve.log",
                  env={"SERVING_RELOAD_TOKEN": "t-" + uuid.uuid4().hex})
    try:
        ping = ep.client.get("/ping")
        for _ in range(50):  # until the first load attempt has reported
            if "ModelRefused" in ping.text:
                break
            ping = ep.client.get("/ping")
        assert ping.status_code == 503 and "ModelRefused" in ping.text and "saved as pickle" in ping.text, ping.text
        assert ep.client.post("/reload").status_code == 401  # a token is configured: required, even locally
        assert not marker.exists()
    finally:
        ep.stop()
    assert "Exception in ASGI application" not in ep.log.read_text()


def test_pickle_allowed_endpoint_runs_the_models_code(evil: tuple[str, Path], local_workdir: Path,
                                                      tmp_path: Path) -> None:
    """The control: the same model, allowed, runs its code on load (so the test above can fail)."""
    name, marker = evil
    ep = Endpoint(name, local_workdir, "--no-capture", "--pickle-allowed", log=tmp_path / "serve.log")
    try:
        for _ in range(100):
            if marker.exists():
                break
            ep.client.get("/ping")
        assert marker.exists()
    finally:
        ep.stop()
