"""One serving worker's ASGI app: MLflow's scoring protocol, micro-batching and inference capture.

Clients see MLflow's scoring server (`mlflow.pyfunc.scoring_server`): the same routes, the same
input parsing and schema enforcement (MLflow's own functions), the same response bytes and
error bodies (workloads/serving/protocol.py). What differs is speed: common JSON requests take
the fast path (fast_path.py), and concurrent requests are coalesced into one `predict` call
(batching.py).

Endpoints: POST /invocations, GET /ping (readiness), /health (liveness), /version (JSON),
/metrics (Prometheus, all workers), POST /reload (also SIGHUP, see server.py). Only /invocations
and /ping are published through an Ingress (components/serving.py).

Hostile input is bounded before it costs anything: API key (auth.py), then admission (requests
and bytes in flight, admission.py), then the body (size and time, asgi.py), then its decoded
size and rows (limits.py) before a DataFrame exists; headers and idle connections at the
connection (connection.py). Capture records the server's request id (asgi.request_ids).
With `--rollout shadow|canary` a challenger serves beside the champion (rollout.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workloads.capture.writer import CaptureWriter
from workloads.serving.admission import Admission, Ticket
from workloads.serving.asgi import read_body, request_headers, request_ids, send_answer
from workloads.serving.auth import Credentials
from workloads.serving.batching import MicroBatcher
from workloads.serving.connection import ConnectionLimits
from workloads.serving.fast_path import Fallback
from workloads.serving.limits import JsonMeter, RequestLimits
from workloads.serving.metrics import Metrics
from workloads.serving.model import LoadedModel, ModelHolder
from workloads.serving.protocol import (
    PLAIN_JSON,
    TEXT,
    Answer,
    Reject,
    error,
    mlflow_error,
    parse_request,
    predict_failed,
    response_json,
)
from workloads.serving.rollout import Rollout
from workloads.serving.shadow import ShadowQueue

if TYPE_CHECKING:
    from workloads.environment import Environment
    from workloads.settings import ServeSettings


class ServingApp:
    """The worker's state (model holder, capture, metrics, batcher) and its handlers; an ASGI app."""

    def __init__(self, settings: ServeSettings, env: Environment, credentials: Credentials | None = None) -> None:
        self.settings = settings
        self.credentials = credentials or Credentials()
        self.holder = ModelHolder(settings.model, settings.alias, env, settings.pickle_allowed)
        self.capture = CaptureWriter.for_environment(
            env, settings.endpoint, flush_seconds=settings.capture_flush_seconds,
            batch_rows=settings.capture_batch_rows, max_buffer_rows=settings.capture_max_buffer_rows,
            max_string_chars=settings.capture_max_string_chars,
        ) if settings.capture else None
        self.limits = RequestLimits(settings.max_request_rows, settings.max_decoded_bytes)
        self.admission = Admission(settings.max_concurrent_requests, settings.max_inflight_bytes)
        self.connection_limits = ConnectionLimits.of(settings)  # read by connection.py's protocol
        self.metrics = Metrics(settings.endpoint, self.capture)
        self.holder.on_swap += [self.metrics.on_swap, _freeze_first_model]
        self.rollout = Rollout(settings, env, self.metrics) if settings.rollout != "none" else None
        if self.rollout is not None:
            self.rollout.holder.on_swap.append(self.metrics.on_swap)
            self.rollout.holder.on_drop.append(self.metrics.on_drop)
        for holder in self._holders():
            if self.capture is not None:  # the served version's signature fixes its capture columns
                holder.on_swap.append(self.capture.on_swap)
        shadow = ShadowQueue(self.rollout, self.capture, settings.max_batch_rows) \
            if self.rollout is not None and self.rollout.mode == "shadow" else None
        self.batcher = MicroBatcher(settings.max_batch_rows, settings.max_wait_ms, self.metrics.on_batch,
                                    self.capture, shadow)
        self.routes = Starlette(routes=[
            Route("/ping", self.ping, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/reload", self.reload, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
        ], lifespan=self.lifespan)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/invocations":
            await self.handle_invocations(scope, receive, send)
        else:
            await self.routes(scope, receive, send)

    # -- scoring ------------------------------------------------------------------------------

    async def invocations(self, model: LoadedModel, body: bytes, content_type: str | None,
                          request_id: str, limits: RequestLimits | None = None) -> Answer:
        """Score one request body: the answer MLflow's scoring server would give, without HTTP.
        `limits` (default: the settings') are checked before anything is built from the body."""
        limits = limits or self.limits
        try:
            payload = limits.json_payload(body) if content_type in PLAIN_JSON else None
            content = await self._fast_path(model, payload, request_id)
            if content is None:
                self.metrics.mlflow_path.inc()
                content = await self._mlflow_path(model, body, content_type, request_id, limits, payload)
            else:
                self.metrics.fast_path.inc()
        except Reject as r:
            return r.answer
        return Answer(200, content)

    async def _fast_path(self, model: LoadedModel, payload: Any, request_id: str) -> str | None:
        """The response body, or None when the request needs the MLflow path."""
        if model.fast is None or payload is None:
            return None
        data = model.fast.from_payload(payload)
        if data is None:
            return None
        try:
            predictions = await self.batcher.predict(model, data, None, request_id)
        except Fallback:
            return None
        return response_json(predictions)

    async def _mlflow_path(self, model: LoadedModel, body: bytes, content_type: str | None,
                           request_id: str, limits: RequestLimits, payload: Any) -> str:
        """MLflow's parsing and validation per request: every format, every error message."""
        from mlflow.exceptions import MlflowException

        data = None
        try:
            data, params, unified = parse_request(body, content_type, model, limits, payload)
            data, params = model.validate(data, params)
        except MlflowException as e:
            # The stock server wraps schema errors raised by predict in this prefix.
            if "enforce" in e.message:
                e.message = f"Failed to predict data '{data}'. \nError: {e.message}"
            raise mlflow_error(e) from None
        try:
            predictions = await self.batcher.predict(model, data, params, request_id)
        except MlflowException as e:
            raise mlflow_error(e) from None
        except Exception:
            raise predict_failed() from None
        return response_json(predictions, unified)  # captured by the batcher (what it scored)

    async def handle_invocations(self, scope: dict, receive: Any, send: Any) -> None:
        """/invocations over bare ASGI: headers and body in, `invocations()`, one response out."""
        if scope["method"] != "POST":
            await send_answer(send, Answer(405, "Method Not Allowed", TEXT), [(b"allow", b"POST")])
            return
        started = time.perf_counter()
        headers = request_headers(scope)
        request_id, client_id = request_ids(headers[b"x-request-id"])
        out = [(b"x-request-id", request_id.encode())]
        if client_id:
            out.append((b"x-client-request-id", client_id.encode()))
        if not self.credentials.may_score(headers[b"authorization"]):
            answer = error(401, "UNAUTHENTICATED", "an API key is required: Authorization: Bearer <key>").answer
            await send_answer(send, answer, [*out, (b"www-authenticate", b'Bearer realm="invocations"')])
        else:
            try:
                with self.admission.ticket() as ticket:  # held until the answer is out
                    answer = await self._admitted(headers, receive, ticket, request_id, out)
                    await send_answer(send, answer, out)
            except Reject as overloaded:
                answer = overloaded.answer
                await send_answer(send, answer, out)
        self.metrics.observe_request(answer.status, time.perf_counter() - started)

    async def _admitted(self, headers: dict[bytes, str | None], receive: Any, ticket: Ticket, request_id: str,
                        out: list[tuple[bytes, bytes]]) -> Answer:
        model, limits = self.holder.current, self.limits.bound(ticket)
        content_type = headers[b"content-type"]
        json = content_type is not None and content_type.lower().startswith("application/json")
        try:
            if model is None:
                raise error(503, "TEMPORARILY_UNAVAILABLE", self.holder.not_ready_reason())
            out.append((b"x-model-version", model.version.encode()))
            body = await read_body(receive, headers[b"content-length"], self.settings.max_body_bytes, ticket,
                                   self.settings.body_timeout_seconds, JsonMeter(limits).feed if json else None)
        except Reject as r:
            return r.answer
        limits = limits.metered() if json else limits
        answering = self.rollout.answering(model, request_id) if self.rollout is not None else model
        answer = await self.invocations(answering, body, content_type, request_id, limits)
        if answering is not model and answer.status != 200 and self.rollout is not None:
            self.rollout.canary_failed(answering, answer.status)  # a canary never adds a failure
            answering, answer = model, await self.invocations(model, body, content_type, request_id, limits)
        out[-1] = (b"x-model-version", answering.version.encode())
        return answer

    # -- the other routes -----------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        if self.holder.current is None:
            answer = error(503, "TEMPORARILY_UNAVAILABLE", self.holder.not_ready_reason()).answer
            return Response(answer.body, answer.status, media_type=answer.media_type)
        return Response("\n", 200, media_type="application/json")

    async def health(self, request: Request) -> Response:
        return Response("\n", 200, media_type="application/json")  # liveness: the process answers

    def version_info(self) -> dict[str, Any]:
        from mlflow.version import VERSION

        m, s = self.holder.current, self.settings
        return {"model": s.model, "alias": s.alias, "version": m.version if m else None,
                "run_id": m.run_id if m else None, "ready": m is not None, "endpoint": s.endpoint,
                "rollout": self.rollout.info() if self.rollout is not None else {"mode": "none"},
                "mlflow_version": VERSION, "pid": os.getpid()}

    async def version(self, request: Request) -> Response:
        return JSONResponse(self.version_info())

    async def reload(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        if not self.credentials.may_reload(request.headers.get("authorization"), client):
            status = 401 if self.credentials.reload_token else 403
            message = ("a reload token is required: Authorization: Bearer <token>" if status == 401 else
                       "reload is accepted from the network only with a token (SERVING_RELOAD_TOKEN)")
            return JSONResponse({"error_code": "PERMISSION_DENIED", "message": message}, status_code=status,
                                headers={"WWW-Authenticate": 'Bearer realm="reload"'} if status == 401 else None)
        swapped = await self.holder.refresh()
        if self.rollout is not None:
            await self.rollout.holder.refresh()  # a promoted or rolled-back challenger is picked up too
        info = {**self.version_info(), "reloaded": swapped}
        if self.holder.current is None:
            reason = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": self.holder.not_ready_reason()}
            return JSONResponse({**info, **reason}, status_code=503)
        return JSONResponse(info)

    async def metrics_endpoint(self, request: Request) -> Response:
        body, media_type = self.metrics.exposition()
        return Response(body, media_type=media_type)

    # -- lifespan -------------------------------------------------------------------------------

    def _holders(self) -> list[ModelHolder]:
        return [self.holder] + ([self.rollout.holder] if self.rollout is not None else [])

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.holder.refresh()  # a missing model is not fatal: the endpoint starts not-ready
        if self.rollout is not None:
            await self.rollout.holder.refresh()  # nor a missing challenger: the champion serves alone
        gc.freeze()  # the imported libraries live as long as the worker (see _freeze_first_model)
        self.batcher.start()
        if self.capture is not None:
            self.capture.start()
        self.metrics.start()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[Any]] = {
            loop.create_task(self.holder.poll(self.settings.poll_seconds, self.settings.bootstrap_poll_seconds))}
        if self.rollout is not None and self.settings.poll_seconds > 0:  # the challenger at the same pace
            tasks.add(loop.create_task(self.rollout.holder.poll(self.settings.poll_seconds, self.settings.poll_seconds)))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not on the main thread: no SIGHUP
            loop.add_signal_handler(signal.SIGHUP, lambda: tasks.update(
                loop.create_task(h.refresh()) for h in self._holders()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await self.batcher.stop()
            if self.capture is not None:
                await asyncio.to_thread(self.capture.close)
            self.metrics.stop()


def _freeze_first_model(old: LoadedModel | None, new: LoadedModel) -> None:
    """The first loaded model lives as long as the worker: move it out of the garbage collector's view.

    Otherwise every full collection walks it and the libraries (~200 ms with the event loop
    stopped), and capture's buffered records, which survive into the oldest generation, trigger
    one every few seconds (p99 ~180 ms instead of ~12 ms at concurrency 8). Called after the first
    load, not only at startup: a worker that started before its alias resolved loads it later.
    Later versions stay in the collector's view (frozen cycles would never be freed).
    """
    if old is None:
        gc.freeze()

