"""The serving app in process, no sockets: `invocations()` against MLflow's own scoring function,
the bare-ASGI route, the model swap and the supervisor's hand-over to its workers."""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.helpers import small_frame
from workloads.environment import Environment, StackOutputs
from workloads.serving import server
from workloads.serving.app import ServingApp
from workloads.serving.connection import GuardedHttpToolsProtocol
from workloads.serving.model import LoadedModel
from workloads.serving.protocol import Answer
from workloads.settings import ServeSettings

# An environment nothing here talks to: capture is off and the registry is never asked.
UNREACHABLE = StackOutputs(environment="t", tracking_uri="http://127.0.0.1:9", data_bucket="d",
                           artifact_bucket="a", capture_bucket="c")


def serving_app(**settings: Any) -> ServingApp:
    return ServingApp(ServeSettings(model="m", capture=False, **settings), Environment(UNREACHABLE, Path("wd")))


def split_body(rows: int, seed: int) -> bytes:
    return json.dumps({"dataframe_split": small_frame(rows, seed).to_dict(orient="split", index=False)}).encode()


ROW = {"x0": 0.5, "x1": -1.0, "x2": 2.0, "n": 3, "plan": "pro"}
REQUESTS = {
    "dataframe_split": (split_body(3, 1), "application/json"),
    "dataframe_records": (json.dumps({"dataframe_records": [ROW, ROW]}).encode(), "application/json"),
    "inputs": (json.dumps({"inputs": {k: [v] for k, v in ROW.items()}}).encode(), "application/json"),
    "csv": (small_frame(2, 2).to_csv(index=False).encode(), "text/csv"),
    "json with charset": (split_body(1, 3), "application/json; charset=utf-8"),
    "missing column": (json.dumps({"dataframe_records": [{"x0": 1.0}]}).encode(), "application/json"),
    "malformed json": (b'{"dataframe_split": {', "application/json"),
    "no format key": (b'{"data": [[1]]}', "application/json"),
    "NaN in a double (predict raises)": (
        b'{"dataframe_records": [{"x0": NaN, "x1": 1.0, "x2": 1.0, "n": 1, "plan": "pro"}]}', "application/json"),
    "wrong content type": (b"hello", "text/plain"),
    "bad charset": (b"{}", "application/json; charset=latin-1"),
    "odd parameter": (b"{}", "application/json; q=1"),
}


def stock(body: bytes, content_type: str, model: LoadedModel) -> Answer:
    """What MLflow's scoring server answers (its FastAPI wrapper turns MlflowException into the body)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        r = scoring_server.invocations(body, content_type, model.pyfunc, model.input_schema)
    except MlflowException as e:
        return Answer(e.get_http_status_code(), e.serialize_as_json())
    return Answer(r.status, r.response, r.mimetype)


async def _score_all(app: ServingApp, model: LoadedModel) -> dict[str, Answer]:
    app.batcher.start()
    try:
        return {label: await app.invocations(model, body, ctype, f"r-{label}")
                for label, (body, ctype) in REQUESTS.items()}
    finally:
        await app.batcher.stop()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_invocations_answers_like_mlflows_scoring_server(small_model: LoadedModel) -> None:
    ours = asyncio.run(_score_all(serving_app(), small_model))
    for label, (body, ctype) in REQUESTS.items():
        theirs = stock(body, ctype, small_model)
        got = ours[label]
        assert (got.status, got.media_type) == (theirs.status, theirs.media_type), (label, got, theirs)
        if got.status == 200 or got.media_type.startswith("text/"):
            assert got.body == theirs.body, label
        else:  # the stock body also carries a Python stack trace; the reason is what must match
            ours_json, theirs_json = json.loads(got.body), json.loads(theirs.body)
            assert ours_json["error_code"] == theirs_json["error_code"], label
            assert ours_json["message"] == theirs_json["message"], label
    statuses = {label: answer.status for label, answer in ours.items()}
    assert sum(s == 200 for s in statuses.values()) == 5 and set(statuses.values()) == {200, 400, 415}, statuses


async def _over_asgi(app: ServingApp, model: LoadedModel | None) -> list[httpx.Response]:
    app.holder.current = model
    app.batcher.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            json_type = {"Content-Type": "application/json"}
            return [
                await client.get("/invocations"),
                await client.post("/invocations", content=split_body(2, 4), headers={**json_type, "X-Request-Id": "a"}),
                await client.post("/invocations", content=b"x" * 101, headers=json_type),
                await client.get("/ping"),
            ]
    finally:
        await app.batcher.stop()


def test_invocations_route_not_ready_then_ready(small_model: LoadedModel) -> None:
    get, not_ready, too_big, ping = asyncio.run(_over_asgi(serving_app(max_body_bytes=100), None))
    assert get.status_code == 405 and get.headers["allow"] == "POST"
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
    # The server assigns the id (capture and labels join on it); a valid client id is only echoed.
    assert uuid.UUID(not_ready.headers["x-request-id"]) and not_ready.headers["x-client-request-id"] == "a"
    assert "models:/m@champion is not loaded yet" in not_ready.json()["message"]
    assert ping.status_code == 503 and too_big.status_code == 503  # nothing is read before a model is loaded

    get, ok, too_big, ping = asyncio.run(_over_asgi(serving_app(max_body_bytes=100_000), small_model))
    assert ok.status_code == 200 and ok.headers["x-model-version"] == "1" and ok.headers["x-client-request-id"] == "a"
    assert ok.headers["x-request-id"] != not_ready.headers["x-request-id"]
    assert len(ok.json()["predictions"]) == 2 and ping.status_code == 200
    _, _, too_big, _ = asyncio.run(_over_asgi(serving_app(max_body_bytes=100), small_model))
    assert too_big.status_code == 413 and "exceeds the limit of 100" in too_big.json()["message"]


def test_first_loaded_model_is_frozen_out_of_the_collectors_view(small_model: LoadedModel,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that starts before its alias resolves must still freeze the model once it loads it."""
    app = serving_app()
    version = ["1"]
    monkeypatch.setattr(app.holder, "_resolve", lambda: (version[0], None))
    monkeypatch.setattr(app.holder, "_load", lambda v, run_id: small_model)
    gc.unfreeze()
    try:
        assert asyncio.run(app.holder.refresh()) is True
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        version[0] = "2"
        assert asyncio.run(app.holder.refresh()) is True
        assert gc.get_freeze_count() == 0  # replaced versions stay collectable
        assert 'mlops_model_ready{mlops_endpoint="m"} 1.0' in app.metrics.exposition()[0].decode()
    finally:
        gc.unfreeze()


def test_serve_listens_where_the_settings_say_and_hands_workers_their_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In a pod `mlops serve --host 0.0.0.0 --port 8080`: uvicorn must get exactly that, and every
    worker must rebuild the same settings and environment from what the supervisor hands over."""
    import uvicorn
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    # Multiprocess metrics are prepared before the workers start (process-wide: recorded, not done here).
    monkeypatch.setattr(server.prometheus, "prepare_multiprocess", lambda: calls.append({"metrics": True}))
    for name in (server.WORKER_ENV, _MLFLOW_IS_IN_SERVING_ENVIRONMENT.name):  # both restored after the test
        monkeypatch.delenv(name, raising=False)
    settings = ServeSettings(model="churn", host="0.0.0.0", port=8080, workers=3, endpoint_name="churn-ep")
    env = Environment(UNREACHABLE, tmp_path)
    server.serve(settings, env)
    metrics, call = calls
    assert metrics == {"metrics": True}
    assert (call["host"], call["port"], call["workers"], call["factory"]) == ("0.0.0.0", 8080, 3, True)
    # The limits uvicorn lacks come from our protocol; the ones it has from the settings.
    assert call["http"] is GuardedHttpToolsProtocol and call["timeout_keep_alive"] == settings.keep_alive_seconds
    assert call["proxy_headers"] is False  # the reload rule's client address is the real peer's
    assert call["app"] == server.APP_FACTORY
    worker = server.worker_app()
    assert worker.settings == settings and worker.settings.endpoint == "churn-ep"
    assert worker.holder._env.outputs == env.outputs and worker.holder._env.workdir == tmp_path
    assert _MLFLOW_IS_IN_SERVING_ENVIRONMENT.get() is True  # as in mlflow's own scoring server
