"""The model being served: one loaded registry version, and the holder that follows the alias.

`ModelHolder` resolves `models:/<name>@<alias>` through the environment's registry, loads the
version it points at and swaps it in atomically (in-flight requests keep theirs). Until the
alias resolves the endpoint is not ready; `poll` keeps asking, then follows alias moves.
An `optional` holder (a rollout's challenger, rollout.py) also lets its version go when the alias
is deleted: the endpoint then serves the champion alone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workloads.serving.fast_path import FastSchema

if TYPE_CHECKING:
    from workloads.environment import Environment

log = logging.getLogger("mlops.serve")


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
    fast: FastSchema | None = None  # set when requests can take the fast path

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


Swap = Callable[[LoadedModel | None, LoadedModel], None]


class ModelHolder:
    """The version being served; swapped atomically when the alias moves (in-flight requests keep theirs)."""

    def __init__(self, name: str, alias: str, env: Environment, pickle_allowed: bool = False,
                 optional: bool = False) -> None:
        self.name = name
        self.alias = alias
        self.pickle_allowed = pickle_allowed  # loading.py: pickle-based models refused unless allowed
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.on_swap: list[Swap] = []  # called on the event loop after each swap
        self.optional = optional
        self.on_drop: list[Callable[[LoadedModel], None]] = []  # an optional alias was deleted
        self._env = env
        self._registry: Any = None  # MlflowClient, created on first use (importing mlflow is slow)
        self._lock = asyncio.Lock()  # one resolve/load at a time

    def not_ready_reason(self) -> str:
        reason = f"model models:/{self.name}@{self.alias} is not loaded yet"
        return f"{reason} ({self.last_error})" if self.last_error else reason

    def _resolve(self) -> tuple[str, str | None]:
        if self._registry is None:
            self._registry = self._env.mlflow_client()
        mv = self._registry.get_model_version_by_alias(self.name, self.alias)
        return str(mv.version), mv.run_id

    def _load(self, version: str, run_id: str | None) -> LoadedModel:
        from workloads.serving.loading import load_pyfunc

        with self._env.tracking():  # `models:/` URIs resolve through the environment's registry
            model = load_pyfunc(f"models:/{self.name}/{version}", self.pickle_allowed)
        return LoadedModel.of(model, self.name, self.alias, version, run_id)

    async def refresh(self) -> bool:
        """Resolve the alias; load and swap in a new version if it moved. True when it swapped."""
        async with self._lock:
            try:
                version, run_id = await asyncio.to_thread(self._resolve)
                if self.current is not None and self.current.version == version:
                    return False
                loaded = await asyncio.to_thread(self._load, version, run_id)
            except Exception as exc:  # registry down or alias not set yet: keep serving what we have
                if self.optional and _alias_missing(exc):
                    self._drop()
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning("models:/%s@%s not loaded: %s", self.name, self.alias, self.last_error)
                return False
            old, self.current, self.last_error = self.current, loaded, None
            log.info("serving models:/%s@%s = version %s (was %s)", self.name, self.alias, version,
                     old.version if old else None)
            for callback in self.on_swap:
                callback(old, loaded)
            return True

    def _drop(self) -> None:
        old, self.current = self.current, None
        if old is not None:
            log.info("models:/%s@%s no longer resolves: version %s unloaded", self.name, self.alias, old.version)
            for callback in self.on_drop:
                callback(old)

    async def poll(self, poll_seconds: float, bootstrap_poll_seconds: float) -> None:
        """Until the alias resolves, poll every `bootstrap_poll_seconds`; then follow alias moves every
        `poll_seconds` (0: stop once a version is loaded)."""
        while True:
            if self.current is None:
                await asyncio.sleep(bootstrap_poll_seconds)
            elif poll_seconds > 0:
                await asyncio.sleep(poll_seconds)
            else:
                return
            await self.refresh()


def _alias_missing(exc: Exception) -> bool:
    """The registry answered that the alias (or the model) does not exist, as opposed to not answering."""
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
