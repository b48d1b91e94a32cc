"""Serve `models:/<name>@<alias>` with MLflow's scoring protocol, micro-batching and inference capture.

Clients see MLflow's scoring server (`mlflow.pyfunc.scoring_server`): the same routes, the same
input parsing and schema enforcement (MLflow's own functions), the same response bytes and
error bodies. What differs is speed: concurrent requests are coalesced into one `predict` call
on a single predictor thread (while it is busy the next batch forms, so an idle server adds no
wait), and results are split back per request. Common JSON requests take a fast path (only
json.loads and a pure-Python name/type check per request; one DataFrame and one MLflow schema
enforcement per batch); everything else is parsed and validated per request with MLflow's own
functions. A batch that fails is retried request by request so only the culprit fails.

Endpoints: POST /invocations, GET /ping (readiness), /health (liveness), /version (JSON),
/metrics (Prometheus; per worker process), POST /reload (also SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import os
import signal
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

from pydantic import BaseModel, Field

from workloads.environment import StackOutputs

log = logging.getLogger("mlops.serve")

CONFIG_ENV = "MLOPS_SERVE_CONFIG"  # how the supervisor hands the config to uvicorn workers
_PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8"})  # fast-path content types


class ServeConfig(BaseModel):
    """Everything `mlops serve` takes; passed to every worker as JSON."""

    model: str
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(1, ge=1)
    max_batch_rows: int = Field(256, ge=1, description="1 turns batching off")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits for more requests")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1)
    capture: bool = True
    endpoint_name: str | None = None
    capture_flush_seconds: float = Field(10.0, gt=0)
    capture_batch_rows: int = Field(50_000, ge=1)
    capture_max_buffer_rows: int = Field(100_000, ge=1)
    poll_seconds: float = Field(30.0, ge=0, description="alias polling; 0 disables")
    bootstrap_poll_seconds: float = Field(5.0, gt=0, description="registry polling until the alias resolves")
    outputs: StackOutputs

    @property
    def endpoint(self) -> str:
        return self.endpoint_name or self.model


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """One concrete registered version and how to call it."""

    name: str
    alias: str
    version: str
    run_id: str | None
    pyfunc: Any  # mlflow.pyfunc.PyFuncModel
    # Models whose signature comes from type hints validate inside predict: no pre-validation,
    # no batching, plain `pyfunc.predict` per request.
    batchable: bool = True
    input_schema: Any = None
    params_schema: Any = None
    _predict_fn: Any = None
    _predict_takes_params: bool = False
    fast: FastSchema | None = None  # set when requests can take the fast path (see below)

    @classmethod
    def load(cls, name: str, alias: str, version: str, run_id: str | None) -> LoadedModel:
        import mlflow.pyfunc

        return cls.of(mlflow.pyfunc.load_model(f"models:/{name}/{version}"), name, alias, version, run_id)

    @classmethod
    def of(cls, model: Any, name: str, alias: str, version: str, run_id: str | None = None) -> LoadedModel:
        """Wrap an already loaded pyfunc model."""
        meta = model.metadata
        typed = meta._is_signature_from_type_hint() or meta._is_type_hint_from_example()
        # What PyFuncModel._predict calls after enforcing the schema (read from mlflow's source):
        # calling it directly skips a second enforcement and the prediction-context bookkeeping.
        fn = model._predict_fn
        params_arg = inspect.signature(fn).parameters.get("params")
        return cls(
            name=name, alias=alias, version=str(version), run_id=run_id, pyfunc=model,
            batchable=not typed, input_schema=meta.get_input_schema(), params_schema=meta.get_params_schema(),
            _predict_fn=fn,
            _predict_takes_params=bool(params_arg and params_arg.kind != inspect.Parameter.VAR_KEYWORD),
            fast=None if typed else FastSchema.of(meta.get_input_schema()),
        )

    def validate(self, data: Any, params: dict | None) -> tuple[Any, dict | None]:
        """MLflow's own input validation (schema and params), exactly as PyFuncModel.predict does."""
        from mlflow.pyfunc import _validate_prediction_input

        if not self.batchable:
            return data, params
        return _validate_prediction_input(
            data, params, self.input_schema, self.params_schema, self.pyfunc.loader_module
        )

    def predict_validated(self, data: Any, params: dict | None) -> Any:
        if not self.batchable:
            return self.pyfunc.predict(data, params=params)
        if self._predict_takes_params:
            return self._predict_fn(data, params=params)
        return self._predict_fn(data)


class ModelHolder:
    """The version being served; swapped atomically when the alias moves (in-flight requests keep theirs)."""

    def __init__(self, name: str, alias: str) -> None:
        self.name = name
        self.alias = alias
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()  # one resolve/load at a time
        self.on_swap: list[Any] = []

    def _resolve(self) -> tuple[str, str | None]:
        from mlflow import MlflowClient

        mv = MlflowClient().get_model_version_by_alias(self.name, self.alias)
        return str(mv.version), mv.run_id

    async def refresh(self) -> bool:
        """Resolve the alias; load and swap in a new version if it moved. True when it swapped."""
        async with self._lock:
            try:
                version, run_id = await asyncio.to_thread(self._resolve)
                if self.current is not None and self.current.version == version:
                    return False
                loaded = await asyncio.to_thread(LoadedModel.load, self.name, self.alias, version, run_id)
            except Exception as exc:  # registry down or alias not set yet: keep serving what we have
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning("models:/%s@%s not loaded: %s", self.name, self.alias, self.last_error)
                return False
            old, self.current, self.last_error = self.current, loaded, None
            log.info("serving models:/%s@%s = version %s (was %s)", self.name, self.alias, version,
                     old.version if old else None)
            for callback in self.on_swap:
                callback(old, loaded)
            return True


# --- the fast path -----------------------------------------------------------------------------
# MLflow's per-request parsing builds and casts a DataFrame for every request: milliseconds of
# pandas work on the event loop. For the common case (a JSON body in one of the four standard
# shapes, exactly the signature's columns, values of exactly the right Python types) the event
# loop only runs json.loads and a pure-Python check; the predictor thread builds ONE DataFrame
# per batch and runs MLflow's own casting and schema enforcement on it once. Anything else, and
# any batch that fails, goes through the MLflow path, which owns every error message.

# Signature types whose JSON values map one-to-one onto Python types (bool is not an int here).
_FAST_TYPES: dict[str, frozenset[type]] = {
    "double": frozenset({float, int}), "float": frozenset({float, int}),
    "long": frozenset({int}), "integer": frozenset({int}),
    "string": frozenset({str}), "boolean": frozenset({bool}),
}


@dataclass(frozen=True)
class FastInput:
    """One request's values, column by column in signature order."""

    columns: list[list]
    rows: int


class _Fallback(Exception):
    """The fast path declined this request after all: serve it through the MLflow path."""


@dataclass(frozen=True)
class FastSchema:
    """The model's column names and accepted value types, for the cheap per-request check."""

    names: tuple[str, ...]
    types: tuple[frozenset[type], ...]

    @classmethod
    def of(cls, schema: Any) -> FastSchema | None:
        """None unless every input is a named scalar column (no tensors, arrays, objects, binary)."""
        from mlflow.types.schema import ColSpec, DataType

        if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
            return None
        specs = schema.inputs
        if not all(isinstance(c, ColSpec) and isinstance(c.type, DataType) and c.type.name in _FAST_TYPES
                   for c in specs):
            return None
        return cls(tuple(c.name for c in specs), tuple(_FAST_TYPES[c.type.name] for c in specs))

    def parse(self, body: bytes) -> FastInput | None:
        """The request's columns, or None when it is not the common case."""
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # invalid JSON or UTF-8, or nested too deep
            return None
        if type(payload) is not dict or len(payload) != 1:  # params, two format keys, LLM input...
            return None
        ((key, value),) = payload.items()
        if key == "dataframe_split":
            columns = self._from_split(value)
        elif key in ("dataframe_records", "instances", "inputs") and type(value) is list:
            columns = self._from_records(value)
        elif key == "inputs" and type(value) is dict:
            columns = self._from_dict(value)
        else:
            return None
        if columns is None or not all({type(v) for v in col} <= ok for col, ok in zip(columns, self.types, strict=True)):
            return None
        return FastInput(columns, len(columns[0]))

    def _from_split(self, split: Any) -> list[list] | None:
        if type(split) is not dict or split.keys() != {"columns", "data"} or split["columns"] != list(self.names):
            return None
        data, width = split["data"], len(self.names)
        if type(data) is not list or not data or not all(type(r) is list and len(r) == width for r in data):
            return None
        return [list(col) for col in zip(*data, strict=True)]  # lengths checked

    def _from_records(self, records: list) -> list[list] | None:
        names = self.names
        if not records or not all(type(r) is dict and r.keys() == set(names) for r in records):
            return None
        return [[r[n] for r in records] for n in names]

    def _from_dict(self, columns: dict) -> list[list] | None:
        if columns.keys() != set(self.names):
            return None
        values = [columns[n] for n in self.names]
        if not all(type(v) is list for v in values) or not values[0] or len({len(v) for v in values}) != 1:
            return None
        return values


def _predict_fast(group: list[_Item], capture: Any) -> list[tuple[bool, Any]]:
    """Predictor thread: one DataFrame, one MLflow schema enforcement and one predict for the group."""
    import pandas as pd
    from mlflow.utils.proto_json_utils import cast_df_types_according_to_schema

    model = group[0].model
    if model.fast is None:  # FastInput only comes from model.fast.parse
        raise RuntimeError(f"{model.name} v{model.version}: fast-path batch for a model without a fast schema")
    names = model.fast.names
    try:
        merged = {n: [v for item in group for v in item.data.columns[i]] for i, n in enumerate(names)}
        # The same casting MLflow's JSON parser applies, then the same enforcement predict applies.
        frame = cast_df_types_according_to_schema(pd.DataFrame(merged, columns=list(names)), model.input_schema)
        frame, params = model.validate(frame, None)
        output = model.predict_validated(frame, params)
        pieces = _split(output, [i.rows for i in group])
    except Exception:
        log.debug("fast batch of %d requests failed; falling back to the MLflow path", len(group), exc_info=True)
        return [(False, _Fallback())] * len(group)
    if capture is not None:
        capture.record_batch([i.request_id for i in group], [i.rows for i in group], model.name, model.version,
                             frame, output)
    return [(True, p) for p in pieces]


def fast_predictions_json(predictions: Any) -> str | None:
    """MLflow's response bytes for a plain numeric array, without its generic encoder; else None."""
    import numpy as np

    if isinstance(predictions, np.ndarray) and predictions.dtype.kind in "biuf":
        # MLflow writes json.dump({"predictions": array.tolist()}): the same floats' repr, same separators.
        return '{"predictions": ' + json.dumps(predictions.tolist()) + "}"
    return None


# --- micro-batching ----------------------------------------------------------------------------


@dataclass
class _Item:
    model: LoadedModel
    data: Any
    params: dict | None
    rows: int
    future: asyncio.Future = field(repr=False)
    request_id: str = ""

    @property
    def group_key(self) -> tuple:
        # Requests are batched only with others for the same model version, path and params.
        if isinstance(self.data, FastInput):
            return (id(self.model), "fast")
        batchable = self.model.batchable and _is_frame(self.data)
        params = json.dumps(self.params, sort_keys=True, default=str) if self.params else None
        return (id(self.model), params, id(self) if not batchable else None)


def _is_frame(data: Any) -> bool:
    import pandas as pd

    return isinstance(data, pd.DataFrame)


class _Unsplittable(Exception):
    """The batch output has no per-row shape to split back."""


def _split(output: Any, sizes: list[int]) -> list[Any]:
    import numpy as np
    import pandas as pd

    total = sum(sizes)
    if isinstance(output, (np.ndarray, list)) and len(output) == total:
        pieces, start = [], 0
        for n in sizes:
            pieces.append(output[start:start + n])
            start += n
        return pieces
    if isinstance(output, (pd.DataFrame, pd.Series)) and len(output) == total:
        pieces, start = [], 0
        for n in sizes:
            pieces.append(output.iloc[start:start + n].reset_index(drop=True))
            start += n
        return pieces
    raise _Unsplittable(type(output).__name__)


def _predict_group(group: list[_Item], capture: Any = None) -> list[tuple[bool, Any]]:
    """Runs on the predictor thread: one predict for the group, or one per request if that fails."""
    import pandas as pd

    if isinstance(group[0].data, FastInput):
        return _predict_fast(group, capture)
    model, params = group[0].model, group[0].params
    if len(group) > 1:
        try:
            batch = pd.concat([i.data for i in group], ignore_index=True)
            return [(True, out) for out in _split(model.predict_validated(batch, params), [i.rows for i in group])]
        except Exception:
            log.info("batched predict of %d requests failed; retrying one by one", len(group), exc_info=True)
    results: list[tuple[bool, Any]] = []
    for item in group:
        try:
            results.append((True, model.predict_validated(item.data, item.params)))
        except Exception as exc:
            results.append((False, exc))
    return results


class MicroBatcher:
    """Coalesces concurrent requests into batched predict calls on one predictor thread."""

    def __init__(self, max_batch_rows: int, max_wait_ms: float, on_batch: Any = None, capture: Any = None) -> None:
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch  # callback(rows, requests) for metrics
        self.capture = capture  # fast batches are captured whole, by the predictor thread
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        # One thread: numpy/sklearn are fastest without contention, and the event loop keeps parsing.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def predict(self, model: LoadedModel, data: Any, params: dict | None, request_id: str = "") -> Any:
        future = asyncio.get_running_loop().create_future()
        rows = data.rows if isinstance(data, FastInput) else len(data) if hasattr(data, "__len__") else 1
        self._queue.append(_Item(model, data, params, rows, future, request_id))
        self._wake.set()
        return await future

    async def _next_batch(self) -> list[_Item]:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch_rows:
            if not self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
                continue
            if rows + self._queue[0].rows > self.max_batch_rows:
                break  # the next request starts the next batch
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            groups: dict[tuple, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.group_key, []).append(item)
            for group in groups.values():
                try:
                    results = await loop.run_in_executor(self._executor, _predict_group, group, self.capture)
                except Exception as exc:  # pragma: no cover - _predict_group catches per item
                    results = [(False, exc)] * len(group)
                if self.on_batch:
                    self.on_batch(sum(i.rows for i in group), len(group))
                for item, (ok, value) in zip(group, results, strict=True):
                    if item.future.done():
                        continue
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)


# --- the scoring protocol ----------------------------------------------------------------------


class _Reject(Exception):
    """A request answered without predicting: status, body and media type."""

    def __init__(self, status: int, body: str, media_type: str = "application/json") -> None:
        super().__init__(body)
        self.status, self.body, self.media_type = status, body, media_type


def _error(status: int, error_code: str, message: str) -> _Reject:
    return _Reject(status, json.dumps({"error_code": error_code, "message": message}))


def parse_request(body: bytes, content_type: str | None, model: LoadedModel) -> tuple[Any, dict | None, bool]:
    """(data, params, unified_llm) from a request, with MLflow's own parsers and messages."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST
    from mlflow.pyfunc import scoring_server as ss
    from mlflow.utils.proto_json_utils import MlflowInvalidInputException

    if not content_type:  # stock mlflow answers 500 here; a missing header is the client's error
        raise _Reject(415, f"This predictor only supports the following content types: Types: "
                           f"{ss.CONTENT_TYPES}. Got '{content_type}'.", "text/plain")
    # Content-type handling copied from scoring_server.invocations so statuses and texts match.
    type_parts = list(map(str.strip, content_type.split(";")))
    mime_type = type_parts[0]
    parameter_values = {key: value for pair in type_parts[1:] for key, _, value in [pair.partition("=")]}
    if parameter_values.get("charset", "utf-8").lower() != "utf-8":
        raise _Reject(415, "The scoring server only supports UTF-8", "text/plain")
    if unexpected := set(parameter_values).difference({"charset"}):
        raise _Reject(415, f"Unrecognized content type parameters: {', '.join(unexpected)}. "
                           f"{ss.SCORING_PROTOCOL_CHANGE_INFO}", "text/plain")
    try:
        if mime_type == ss.CONTENT_TYPE_CSV:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as ex:
                raise MlflowInvalidInputException(
                    f"Ensure that input is a valid UTF-8 encoded string. Error: '{ex!r}'"
                ) from ex
            return ss.parse_csv_input(csv_input=StringIO(text), schema=model.input_schema), None, False
        if mime_type == ss.CONTENT_TYPE_JSON:
            parsed = ss._parse_json_data(body, model.pyfunc.metadata, model.input_schema)
            return parsed.data, parsed.params, parsed.is_unified_llm_input
        if mime_type == ss.CONTENT_TYPE_PARQUET:
            from io import BytesIO

            return ss.parse_parquet_input(parquet_input=BytesIO(body)), None, False
    except MlflowException:
        raise
    except Exception as exc:  # anything else a parser raises is still the payload's fault
        # error_code takes the proto enum: the string "BAD_REQUEST" would turn into a 500.
        raise MlflowException(f"Failed to parse the request body: {exc}", error_code=BAD_REQUEST) from None
    raise _Reject(415, f"This predictor only supports the following content types: Types: {ss.CONTENT_TYPES}. "
                       f"Got '{content_type}'.", "text/plain")


def predictions_json(predictions: Any, unified_llm: bool) -> str:
    """The response body, byte for byte what the stock server writes."""
    from mlflow.pyfunc import scoring_server as ss

    out = StringIO()
    (ss.unwrapped_predictions_to_json if unified_llm else ss.predictions_to_json)(predictions, out)
    return out.getvalue()


# --- metrics -----------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics of one worker process (each worker has its own registry)."""

    def __init__(self, capture: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mlops_serving_requests", "Scoring requests by HTTP status",
                                ["status"], registry=self.registry)
        self.latency = Histogram("mlops_serving_request_seconds", "Scoring request latency",
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch_rows = Histogram("mlops_serving_batch_rows", "Rows per predict call", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.batch_requests = Histogram("mlops_serving_batch_requests", "Requests per predict call",
                                        registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.model_info = Gauge("mlops_model_version_info", "The model version being served (value 1)",
                                ["model", "alias", "version"], registry=self.registry)
        self.ready = Gauge("mlops_model_ready", "1 when a model version is loaded", registry=self.registry)
        paths = Counter("mlops_serving_path_requests", "Scoring requests by path: fast (batch-parsed) or mlflow "
                        "(MLflow's per-request parsing)", ["path"], registry=self.registry)
        self.fast_path, self.mlflow_path = paths.labels("fast"), paths.labels("mlflow")
        self._by_status: dict[int, Any] = {}
        if capture is not None:
            self.registry.register(_CaptureCollector(capture))

    def observe_request(self, status: int, seconds: float) -> None:
        counter = self._by_status.get(status)
        if counter is None:  # labels() costs a lock and a dict lookup: keep the child per status
            counter = self._by_status[status] = self.requests.labels(str(status))
        counter.inc()
        self.latency.observe(seconds)

    def on_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def on_swap(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            with contextlib.suppress(KeyError):
                self.model_info.remove(old.name, old.alias, old.version)
        self.model_info.labels(new.name, new.alias, new.version).set(1)
        self.ready.set(1)


class _CaptureCollector:
    """Reads the capture writer's counters at scrape time."""

    def __init__(self, capture: Any) -> None:
        self.capture = capture

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.capture.stats
        yield CounterMetricFamily("mlops_capture_records_written", "Captured rows written", value=s.records_written)
        yield CounterMetricFamily("mlops_capture_records_dropped", "Captured rows dropped (buffer full or lost)",
                                  value=s.records_dropped)
        yield CounterMetricFamily("mlops_capture_flush_errors", "Failed capture writes", value=s.flush_errors)
        yield GaugeMetricFamily("mlops_capture_buffered_rows", "Rows waiting to be written", value=s.buffered_rows)


# --- the application ---------------------------------------------------------------------------


def create_app(config: ServeConfig | None = None) -> Any:
    """The ASGI app of one worker (uvicorn calls this factory in every worker process)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if config is None:
        config = ServeConfig.model_validate_json(os.environ[CONFIG_ENV])
    config.outputs.apply_env()
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    os.environ[_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name] = "true"  # what mlflow's scoring server sets

    holder = ModelHolder(config.model, config.alias)
    capture = None
    if config.capture:
        from workloads.capture.writer import CaptureWriter, capture_s3_client

        capture = CaptureWriter(
            capture_s3_client(config.outputs.s3_endpoint), config.outputs.capture_bucket, config.endpoint,
            flush_seconds=config.capture_flush_seconds, batch_rows=config.capture_batch_rows,
            max_buffer_rows=config.capture_max_buffer_rows,
        )
    metrics = Metrics(capture)
    holder.on_swap.append(metrics.on_swap)
    batcher = MicroBatcher(config.max_batch_rows, config.max_wait_ms, metrics.on_batch, capture)

    def not_ready() -> _Reject:
        reason = f"model models:/{config.model}@{config.alias} is not loaded yet"
        if holder.last_error:
            reason += f" ({holder.last_error})"
        return _error(503, "TEMPORARILY_UNAVAILABLE", reason)

    async def read_body(receive: Any, declared: str | None) -> bytes:
        limit = config.max_body_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise _error(413, "RESOURCE_EXHAUSTED", f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _error(400, "BAD_REQUEST", "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _error(413, "RESOURCE_EXHAUSTED", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def fast_path(model: LoadedModel, body: bytes, content_type: str | None, request_id: str) -> str | None:
        """The response body, or None when the request needs the MLflow path."""
        if model.fast is None or content_type not in _PLAIN_JSON:
            return None
        data = model.fast.parse(body)
        if data is None:
            return None
        try:
            predictions = await batcher.predict(model, data, None, request_id)
        except _Fallback:
            return None
        return fast_predictions_json(predictions) or predictions_json(predictions, False)

    async def mlflow_path(model: LoadedModel, body: bytes, content_type: str | None, request_id: str) -> str:
        """MLflow's parsing and validation per request: every format, every error message."""
        from mlflow.exceptions import MlflowException

        data = None
        try:
            data, params, unified = parse_request(body, content_type, model)
            data, params = model.validate(data, params)
        except MlflowException as e:
            # The stock server wraps schema errors raised by predict in this prefix.
            if "enforce" in e.message:
                e.message = f"Failed to predict data '{data}'. \nError: {e.message}"
            raise _Reject(e.get_http_status_code(), e.serialize_as_json()) from None
        try:
            predictions = await batcher.predict(model, data, params, request_id)
        except MlflowException as e:
            raise _Reject(e.get_http_status_code(), e.serialize_as_json()) from None
        except Exception:
            # The stock server's answer to an exception inside predict.
            raise _error(400, "BAD_REQUEST", "Encountered an unexpected error while evaluating the model. "
                         "Verify that the serialized input Dataframe is compatible with the model for "
                         "inference.") from None
        content = (None if unified else fast_predictions_json(predictions)) or predictions_json(predictions, unified)
        if capture is not None and _is_frame(data):
            capture.record(request_id, model.name, model.version, data, predictions)
        return content

    async def invocations(scope: dict, receive: Any, send: Any) -> None:
        """/invocations as a bare ASGI handler: Starlette's router and middleware cost more than the fast path."""
        if scope["method"] != "POST":
            await _send(send, 405, b"Method Not Allowed", "text/plain", [(b"allow", b"POST")])
            return
        started = time.perf_counter()
        wanted = {b"x-request-id": None, b"content-type": None, b"content-length": None}
        for key, value in scope["headers"]:  # names arrive lower-cased; the first occurrence wins
            if key in wanted and wanted[key] is None:
                wanted[key] = value.decode("latin-1")
        request_id = wanted[b"x-request-id"] or str(uuid.uuid4())
        headers = [(b"x-request-id", request_id.encode("latin-1"))]
        status, media_type = 200, "application/json"
        model = holder.current
        try:
            if model is None:
                raise not_ready()
            headers.append((b"x-model-version", model.version.encode()))
            body = await read_body(receive, wanted[b"content-length"])
            content_type = wanted[b"content-type"]
            content = await fast_path(model, body, content_type, request_id)
            if content is None:
                metrics.mlflow_path.inc()
                content = await mlflow_path(model, body, content_type, request_id)
            else:
                metrics.fast_path.inc()
        except _Reject as r:
            status, content, media_type = r.status, r.body, r.media_type
        await _send(send, status, content.encode(), media_type, headers)
        metrics.observe_request(status, time.perf_counter() - started)

    async def ping(request: Request) -> Response:
        if holder.current is None:
            r = not_ready()
            return Response(r.body, r.status, media_type=r.media_type)
        return Response("\n", 200, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response("\n", 200, media_type="application/json")  # liveness: the process answers

    def version_info() -> dict:
        from mlflow.version import VERSION

        m = holder.current
        return {"model": config.model, "alias": config.alias, "version": m.version if m else None,
                "run_id": m.run_id if m else None, "ready": m is not None, "endpoint": config.endpoint,
                "mlflow_version": VERSION, "pid": os.getpid()}

    async def version(request: Request) -> Response:
        return JSONResponse(version_info())

    async def reload(request: Request) -> Response:
        swapped = await holder.refresh()
        info = version_info()
        info["reloaded"] = swapped
        if holder.current is None:
            return JSONResponse({**info, **json.loads(not_ready().body)}, status_code=503)
        return JSONResponse(info)

    async def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def poll_registry() -> None:
        """Until the alias resolves, poll often; then poll for alias moves every poll_seconds."""
        while True:
            if holder.current is None:
                await asyncio.sleep(config.bootstrap_poll_seconds)
            elif config.poll_seconds > 0:
                await asyncio.sleep(config.poll_seconds)
            else:
                return
            await holder.refresh()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await holder.refresh()  # a missing model is not fatal: the endpoint starts not-ready
        # The imported libraries and the loaded model live as long as the worker: move them out of the
        # garbage collector's view. Otherwise every full collection walks them all (~200 ms with the
        # event loop stopped), and capture's buffered records, which survive into the oldest generation,
        # trigger one every few seconds (p99 ~180 ms instead of ~12 ms at concurrency 8).
        gc.freeze()
        batcher.start()
        if capture is not None:
            capture.start()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[Any]] = {loop.create_task(poll_registry())}
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: tasks.add(loop.create_task(holder.refresh())))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await batcher.stop()
            if capture is not None:
                await asyncio.to_thread(capture.close)

    routes = [
        Route("/ping", ping, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/reload", reload, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    starlette = Starlette(routes=routes, lifespan=lifespan)
    starlette.state.holder, starlette.state.capture, starlette.state.metrics = holder, capture, metrics

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/invocations":
            await invocations(scope, receive, send)
        else:
            await starlette(scope, receive, send)

    app.state = starlette.state  # type: ignore[attr-defined]
    return app


async def _send(send: Any, status: int, body: bytes, media_type: str, headers: list[tuple[bytes, bytes]]) -> None:
    """One complete HTTP response over ASGI, with the headers Starlette's Response would write."""
    if media_type.startswith("text/"):
        media_type += "; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", media_type.encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def run(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM: one uvicorn worker process per `config.workers`."""
    import uvicorn

    os.environ[CONFIG_ENV] = config.model_dump_json()
    fast: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        import httptools  # noqa: F401
        import uvloop  # noqa: F401

        fast = {"http": "httptools", "loop": "uvloop"}
    uvicorn.run(
        "workloads.serving.app:create_app", factory=True, host=config.host, port=config.port,
        workers=config.workers, access_log=False, log_level="info", timeout_graceful_shutdown=30, **fast,
    )
