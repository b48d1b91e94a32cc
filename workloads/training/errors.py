"""What a training job refuses (a bad spec) or cannot finish; both leave no model version behind."""

from __future__ import annotations

from workloads.errors import MlopsError, UsageError


class SpecError(UsageError, ValueError):
    """The training spec is invalid; the message names the key."""

    kind = "SpecError"


class TrainingError(MlopsError, RuntimeError):
    """Training could not complete; no model version was left registered."""

    kind = "training failed"
