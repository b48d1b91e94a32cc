"""Shadow scoring off the response path: the challenger scores what the champion scored, in bulk.

In shadow mode (rollout.py) the micro-batcher answers each batch with the champion and hands its
scored frames here instead of to capture. Every `every` seconds, or as soon as `rows` rows wait,
the frames are concatenated and the challenger predicts them in ONE call on the predictor thread;
then each frame is captured with both answers. Measured (docs/benchmarks.md): scoring the
challenger right after every micro-batch doubled the predictor thread's fixed per-call cost and put
p99 at concurrency 8 at 2.5x single-model serving; one call per `every` makes it a small share.

A challenger failure (or no challenger any more) is counted and logged by the rollout; the
frames are captured with an empty shadow. Nothing here can fail a request: answers are out first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from workloads.settings import CHALLENGER_ALIAS

if TYPE_CHECKING:
    from workloads.serving.batching import Item, Scored
    from workloads.serving.rollout import Rollout

log = logging.getLogger("mlops.serve")


class ShadowQueue:
    """Scored frames waiting for the challenger; drained on a timer, when full, and at stop."""

    def __init__(self, rollout: Rollout, capture: object | None, rows: int, every: float = 0.1) -> None:
        self.rollout, self.capture, self.rows, self.every = rollout, capture, rows, every
        self._pending: list[Scored] = []
        self._pending_rows = 0

    def takes(self, group: list[Item]) -> bool:
        """The group is the champion's and a challenger is loaded: capture waits for its shadow."""
        return self.rollout.shadowing() is not None and group[0].model.alias != CHALLENGER_ALIAS

    async def add(self, scored: list[Scored], executor: Executor) -> None:
        self._pending += scored
        self._pending_rows += sum(len(s.frame) for s in scored)
        if self._pending_rows >= self.rows:
            await self.flush(executor)

    async def run(self, executor: Executor) -> None:
        while True:
            await asyncio.sleep(self.every)
            if self._pending:
                await self.flush(executor)

    async def flush(self, executor: Executor) -> None:
        taken, self._pending, self._pending_rows = self._pending, [], 0
        if taken:
            # Shielded: stopping must not cancel frames (and their capture) not yet scored.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(executor, self._score, taken))

    def _score(self, taken: list[Scored]) -> None:
        """Predictor thread: one challenger call for all waiting frames, then each captured with both answers."""
        import pandas as pd

        from workloads.serving.batching import Unsplittable, split

        challenger, pieces = self.rollout.shadowing(), [None] * len(taken)
        if challenger is not None:
            frame = taken[0].frame if len(taken) == 1 else pd.concat([s.frame for s in taken], ignore_index=True)
            output = self.rollout.shadow_predict(challenger, frame)
            if output is not None:
                with contextlib.suppress(Unsplittable):
                    pieces = split(output, [len(s.frame) for s in taken])
        if self.capture is None:
            return
        for s, piece in zip(taken, pieces, strict=True):
            s.record(self.capture, (challenger.version, piece) if challenger is not None else None)
