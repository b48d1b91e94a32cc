"""A challenger beside the champion: shadow or canary (`--rollout`, stack key `serving.endpoints[].rollout`).

With a rollout the endpoint also follows `models:/<name>@challenger` (an optional holder: while
the alias is unset, or once the monitor deletes it, the champion serves alone; a promotion moves
`champion` to the challenger's version, which the champion holder picks up on its next reload).

- shadow: the champion answers every request; after the answers are sent the challenger scores
  the same frames, several batches in one call (shadow.py), and capture records both answers
  (`_shadow_version`, `_shadow_prediction`). A challenger failure is counted and logged, never
  an error to the client.
- canary: a request whose server request id hashes below `--canary-weight` is answered by the
  challenger (sticky: the same id always lands on the same side); capture's `_model_version`
  says who answered. A request the challenger fails is answered again by the champion, so a
  canary never adds failures.

The monitor compares the two on the captured window and promotes or rolls back
(workloads/monitoring/rollout.py).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from workloads.serving.model import LoadedModel, ModelHolder
from workloads.settings import CHALLENGER_ALIAS

if TYPE_CHECKING:
    from workloads.environment import Environment
    from workloads.serving.metrics import Metrics
    from workloads.settings import ServeSettings

log = logging.getLogger("mlops.serve")


def bucket(request_id: str) -> float:
    """Where a request id falls in [0, 1): a stable hash, so routing is sticky per id."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Rollout:
    """The endpoint's challenger (if any) and how it takes part in answering."""

    def __init__(self, settings: ServeSettings, env: Environment, metrics: Metrics) -> None:
        self.mode, self.weight = settings.rollout, settings.canary_weight
        self.holder = ModelHolder(settings.model, CHALLENGER_ALIAS, env, settings.pickle_allowed, optional=True)
        self.metrics = metrics

    @property
    def challenger(self) -> LoadedModel | None:
        return self.holder.current

    def answering(self, champion: LoadedModel, request_id: str) -> LoadedModel:
        """Who answers this request: the challenger for a canary's share, else the champion."""
        challenger = self.holder.current
        if self.mode != "canary" or challenger is None or bucket(request_id) >= self.weight:
            return champion
        self.metrics.rollout_event("canary")
        return challenger

    def shadowing(self) -> LoadedModel | None:
        """The challenger to shadow the next batch with (shadow mode, challenger loaded)."""
        return self.holder.current if self.mode == "shadow" else None

    def shadow_predict(self, challenger: LoadedModel, frame: Any) -> Any:
        """Predictor thread: the challenger's answers for a frame the champion scored; None when it fails."""
        try:
            data, params = challenger.validate(frame, None)
            output = challenger.predict_validated(data, params)
        except Exception as exc:
            self.metrics.rollout_event("shadow_failed")
            log.warning("shadow: challenger v%s failed on %d rows: %s: %s", challenger.version, len(frame),
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None
        self.metrics.rollout_event("shadow")
        return output

    def canary_failed(self, challenger: LoadedModel, status: int) -> None:
        self.metrics.rollout_event("canary_fallback")
        log.warning("canary: challenger v%s answered %d; answering with the champion", challenger.version, status)

    def info(self) -> dict[str, Any]:
        """For /version."""
        m = self.holder.current
        return {"mode": self.mode, "weight": self.weight if self.mode == "canary" else None,
                "challenger": {"alias": CHALLENGER_ALIAS, "version": m.version, "run_id": m.run_id} if m else None}
