"""The app's guards over ASGI (no sockets): API keys, the reload credential, admission (503 +
Retry-After), the body deadline, and request ids the server assigns."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.serving.test_app import serving_app, split_body
from workloads.serving.admission import Admission
from workloads.serving.app import ServingApp
from workloads.serving.auth import Credentials
from workloads.serving.model import LoadedModel
from workloads.serving.protocol import Reject

JSON_TYPE = {"Content-Type": "application/json"}


def run(app: ServingApp, model: LoadedModel | None, talk: Callable[[httpx.AsyncClient], Awaitable[Any]],
        client: tuple[str, int] = ("127.0.0.1", 5000)) -> Any:
    async def go() -> Any:
        app.holder.current = model
        app.batcher.start()
        try:
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
                return await talk(http)
        finally:
            await app.batcher.stop()

    return asyncio.run(go())


# --- API keys and the reload credential ------------------------------------------------------------


def test_api_keys_guard_invocations(small_model: LoadedModel) -> None:
    app = serving_app()
    app.credentials = Credentials.of(["k-one", "k-two"])

    async def talk(http: httpx.AsyncClient) -> list[httpx.Response]:
        return [await http.post("/invocations", content=split_body(1, 0), headers={**JSON_TYPE, **auth})
                for auth in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k-one"},
                             {"Authorization": "Bearer k-two"})] + [await http.get("/ping")]

    none, wrong, basic, good, ping = run(app, small_model, talk)
    for r in (none, wrong, basic):
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error_code"] == "UNAUTHENTICATED"
    assert good.status_code == 200 and ping.status_code == 200  # readiness needs no key (probes)


def test_no_api_keys_configured_means_open_invocations(small_model: LoadedModel) -> None:
    async def talk(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/invocations", content=split_body(1, 0), headers=JSON_TYPE)

    assert run(serving_app(), small_model, talk).status_code == 200


@pytest.mark.parametrize(("token", "client", "sent", "status"), [
    (None, "127.0.0.1", None, 200),  # a local `mlops serve` (the quickstart) reloads without a token
    (None, "10.1.2.3", None, 403),  # from the network: never without a token
    ("s3cret-token", "10.1.2.3", None, 401),
    ("s3cret-token", "10.1.2.3", "wrong", 401),
    ("s3cret-token", "127.0.0.1", None, 401),  # a token, once configured, is required from anywhere
    ("s3cret-token", "10.1.2.3", "s3cret-token", 200),
])
def test_reload_needs_the_token(small_model: LoadedModel, monkeypatch: pytest.MonkeyPatch, token: str | None,
                                client: str, sent: str | None, status: int) -> None:
    app = serving_app()
    app.credentials = Credentials.of(reload_token=token)
    refreshed: list[bool] = []

    async def refresh() -> bool:
        refreshed.append(True)
        return False

    monkeypatch.setattr(app.holder, "refresh", refresh)
    headers = {"Authorization": f"Bearer {sent}"} if sent else {}

    async def talk(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/reload", headers=headers)

    r = run(app, small_model, talk, client=(client, 4000))
    assert r.status_code == status, r.text
    assert refreshed == ([True] if status == 200 else [])  # refused reloads change nothing


def test_credentials_from_the_environment() -> None:
    creds = Credentials.from_environ({"SERVING_API_KEYS": "a1, b2\nc3", "SERVING_RELOAD_TOKEN": " t0k "})
    assert all(creds.may_score(f"Bearer {k}") for k in ("a1", "b2", "c3")) and not creds.may_score("Bearer a")
    assert creds.may_reload("Bearer t0k", "10.0.0.1") and not creds.may_reload(None, "127.0.0.1")
    empty = Credentials.from_environ({})
    assert empty.may_score(None) and not empty.api_keys and empty.reload_token is None


# --- request ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "echoed"), [
    ("order-42", "order-42"), ("a" * 128, "a" * 128), ("a" * 129, None), ("has space", None),
    ("semi;colon", None), ("", None), (None, None)])
def test_the_server_assigns_request_ids(small_model: LoadedModel, sent: str | None, echoed: str | None) -> None:
    captured: list[str] = []
    app = serving_app()
    app.batcher.capture = type("Capture", (), {"record_batch": lambda self, ids, *a: captured.extend(ids)})()

    async def talk(http: httpx.AsyncClient) -> httpx.Response:
        headers = {**JSON_TYPE, **({"X-Request-Id": sent} if sent is not None else {})}
        return await http.post("/invocations", content=split_body(2, 0), headers=headers)

    r = run(app, small_model, talk)
    assert r.status_code == 200
    server_id = r.headers["x-request-id"]
    assert str(uuid.UUID(server_id)) == server_id and server_id != sent
    assert r.headers.get("x-client-request-id") == echoed
    assert captured == [server_id]  # capture (and so labels) key on the server's id, never the client's


# --- admission -----------------------------------------------------------------------------------------


def test_admission_counts_requests_and_bytes() -> None:
    admission = Admission(max_requests=2, max_bytes=1000)
    with admission.ticket() as first:
        first.reserve(5000)  # alone in flight: admitted up to the per-request limits
        with admission.ticket() as second:
            with pytest.raises(Reject) as refused:
                second.reserve(10)
            assert refused.value.answer.status == 503 and "--max-inflight-bytes" in refused.value.answer.body
            with pytest.raises(Reject) as too_many, admission.ticket():
                pass
            assert "2 requests in flight; the limit is 2" in too_many.value.answer.body
    assert (admission.requests_in_flight, admission.bytes_in_flight) == (0, 0)


def test_overload_gets_503_with_retry_after_and_others_still_score(small_model: LoadedModel,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests in flight hold the predictor; the third is turned away at once, not queued."""
    app = serving_app(max_concurrent_requests=2)
    release = threading.Event()
    real = small_model.predict_validated

    def slow(data: Any, params: Any) -> Any:
        release.wait(10)
        return real(data, params)

    monkeypatch.setattr(type(small_model), "predict_validated", lambda self, d, p: slow(d, p))

    async def talk(http: httpx.AsyncClient) -> list[httpx.Response]:
        post = lambda: http.post("/invocations", content=split_body(1, 0), headers=JSON_TYPE)  # noqa: E731
        held = [asyncio.ensure_future(post()) for _ in range(2)]
        await asyncio.sleep(0.3)
        third = await post()
        release.set()
        return [third, *await asyncio.gather(*held)]

    third, *held = run(app, small_model, talk)
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert "--max-concurrent-requests" in third.json()["message"]
    assert [r.status_code for r in held] == [200, 200]
    assert app.admission.requests_in_flight == 0


def test_a_body_that_never_completes_gets_408(small_model: LoadedModel) -> None:
    app = serving_app(body_timeout_seconds=0.3)

    async def go() -> list[dict]:
        app.holder.current = small_model
        sent: list[dict] = []

        async def receive() -> dict:
            await asyncio.sleep(3600)  # the client stalls mid-body
            return {}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/invocations", "client": ("10.0.0.1", 1),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]}
        await asyncio.wait_for(app(scope, receive, send), 5)
        return sent

    start, body = asyncio.run(go())
    assert start["status"] == 408 and "--body-timeout-seconds" in json.loads(body["body"])["message"]
    assert app.admission.requests_in_flight == 0 and app.admission.bytes_in_flight == 0
