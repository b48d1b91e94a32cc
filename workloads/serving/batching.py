"""Micro-batching: concurrent requests coalesced into one `predict` call on one predictor thread.

While the predictor is busy the next batch forms, so an idle server adds no wait. Requests are
batched only with others for the same model version, path (fast or MLflow) and params; results
are split back per request. A batch that fails is retried request by request so only the
culprit fails (a failing fast batch falls back whole to the MLflow path, which does that).

Capture records what the predictor scored (a frame, its output and whose rows they are) on the
predictor thread. In shadow mode the batch's answers are sent first; its frames then wait for the
challenger (shadow.py), which captures them with both answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workloads.serving.fast_path import Fallback, FastInput, batch_input
from workloads.serving.model import LoadedModel

if TYPE_CHECKING:
    from workloads.serving.shadow import ShadowQueue

log = logging.getLogger("mlops.serve")
Result = tuple[bool, Any]  # (True, predictions) or (False, the exception to raise)


@dataclass
class Item:
    """One request waiting for the predictor."""

    model: LoadedModel
    data: Any  # FastInput (fast path) or what MLflow's parser returned
    params: dict | None
    rows: int
    future: asyncio.Future = field(repr=False)
    request_id: str = ""

    @property
    def group_key(self) -> tuple:
        if isinstance(self.data, FastInput):
            return (id(self.model), "fast")
        batchable = self.model.batchable and is_frame(self.data)
        params = json.dumps(self.params, sort_keys=True, default=str) if self.params else None
        return (id(self.model), params, id(self) if not batchable else None)


def is_frame(data: Any) -> bool:
    import pandas as pd

    return isinstance(data, pd.DataFrame)


class Unsplittable(Exception):
    """The batch output has no per-row shape to split back."""


def split(output: Any, sizes: list[int]) -> list[Any]:
    """A batch's output cut back into one piece per request (`sizes` rows each)."""
    import numpy as np
    import pandas as pd

    ends = list(itertools.accumulate(sizes))
    bounds = list(zip([0, *ends[:-1]], ends, strict=True))
    if isinstance(output, (np.ndarray, list)) and len(output) == sum(sizes):
        return [output[start:end] for start, end in bounds]
    if isinstance(output, (pd.DataFrame, pd.Series)) and len(output) == sum(sizes):
        return [output.iloc[start:end].reset_index(drop=True) for start, end in bounds]
    raise Unsplittable(type(output).__name__)


@dataclass(frozen=True)
class Scored:
    """A frame the predictor scored and whose rows it holds: what capture records (and a shadow re-scores)."""

    model: LoadedModel
    request_ids: list[str]
    sizes: list[int]
    frame: Any
    output: Any

    @classmethod
    def of(cls, group: list[Item], frame: Any, output: Any) -> Scored:
        return cls(group[0].model, [i.request_id for i in group], [i.rows for i in group], frame, output)

    def record(self, capture: Any, shadow: tuple[str, Any] | None = None) -> None:
        extra = {"shadow": shadow} if shadow is not None else {}  # outside shadow mode: the plain call
        capture.record_batch(self.request_ids, self.sizes, self.model.name, self.model.version, self.frame,
                             self.output, **extra)


def predict_group(group: list[Item]) -> tuple[list[Result], list[Scored]]:
    """Predictor thread: one predict for the group, or one per request if that fails; and the frames scored."""
    import pandas as pd

    if isinstance(group[0].data, FastInput):
        return predict_fast(group)
    model, params = group[0].model, group[0].params
    if len(group) > 1:
        try:
            batch = pd.concat([i.data for i in group], ignore_index=True)
            output = model.predict_validated(batch, params)
            results: list[Result] = [(True, out) for out in split(output, [i.rows for i in group])]
            return results, [Scored.of(group, batch, output)]
        except Exception:
            log.info("batched predict of %d requests failed; retrying one by one", len(group), exc_info=True)
    results, scored = [], []
    for item in group:
        try:
            output = model.predict_validated(item.data, item.params)
        except Exception as exc:
            results.append((False, exc))
            continue
        results.append((True, output))
        if is_frame(item.data):
            scored.append(Scored.of([item], item.data, output))
    return results, scored


def predict_fast(group: list[Item]) -> tuple[list[Result], list[Scored]]:
    """Predictor thread: one DataFrame, one MLflow schema enforcement and one predict for a fast group.
    Any failure sends every request of the group to the MLflow path."""
    model, sizes = group[0].model, [i.rows for i in group]
    try:
        frame, params = batch_input(model, [i.data for i in group])
        output = model.predict_validated(frame, params)
        pieces = split(output, sizes)
    except Exception:
        log.debug("fast batch of %d requests failed; falling back to the MLflow path", len(group), exc_info=True)
        return [(False, Fallback())] * len(group), []
    return [(True, p) for p in pieces], [Scored.of(group, frame, output)]


class MicroBatcher:
    """Coalesces concurrent requests into batched predict calls on one predictor thread."""

    def __init__(self, max_batch_rows: int, max_wait_ms: float,
                 on_batch: Callable[[int, int], None] | None = None, capture: Any = None,
                 shadow: ShadowQueue | None = None) -> None:
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch  # callback(rows, requests) for metrics
        self.capture = capture  # what the predictor thread scored is captured by it, a batch at a time
        self.shadow = shadow  # shadow mode: the challenger scores the frames after their answers are sent
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        # One thread: numpy/sklearn are fastest without contention, and the event loop keeps parsing.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._task: asyncio.Task | None = None
        self._shadow_task: asyncio.Task | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._shadow_task = loop.create_task(self.shadow.run(self._executor)) if self.shadow is not None else None

    async def stop(self) -> None:
        for task in (self._task, self._shadow_task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.shadow is not None:
            await self.shadow.flush(self._executor)  # what still waits for the challenger is captured too
        self._executor.shutdown(wait=True)

    async def predict(self, model: LoadedModel, data: Any, params: dict | None, request_id: str = "") -> Any:
        future = asyncio.get_running_loop().create_future()
        rows = data.rows if isinstance(data, FastInput) else len(data) if hasattr(data, "__len__") else 1
        self._queue.append(Item(model, data, params, rows, future, request_id))
        self._wake.set()
        return await future

    async def _next_batch(self) -> list[Item]:
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
        while True:
            groups: dict[tuple, list[Item]] = {}
            for item in await self._next_batch():
                groups.setdefault(item.group_key, []).append(item)
            for group in groups.values():
                await self._predict(group)

    async def _predict(self, group: list[Item]) -> None:
        """One group on the predictor thread; every request's future gets its result or exception.
        A shadowed group is then scored by the challenger (its answers are on their way meanwhile)."""
        loop = asyncio.get_running_loop()
        shadowed = self.shadow is not None and self.shadow.takes(group)
        scored: list[Scored] = []
        try:
            results, scored = await loop.run_in_executor(self._executor, self._score, group, not shadowed)
        except Exception as exc:  # pragma: no cover - predict_group catches per item
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
        if shadowed and self.shadow is not None and scored:
            await self.shadow.add(scored, self._executor)

    def _score(self, group: list[Item], capture_now: bool) -> tuple[list[Result], list[Scored]]:
        """Predictor thread: the group's results; captured now unless a shadow will capture it."""
        results, scored = predict_group(group)
        if capture_now and self.capture is not None:
            for s in scored:
                s.record(self.capture)
        return results, scored
