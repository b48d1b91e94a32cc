"""What one monitoring pass found and did: the result (the CLI's `--json` summary) and its exit code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from workloads.errors import MlopsError
from workloads.monitoring.alerts import AlertOutcome
from workloads.monitoring.drift import DriftReport

Status = Literal["ok", "drift", "performance_decay", "insufficient_data", "data_integrity_failure"]
EXIT_CODES: dict[str, int] = {  # the CLI's exit code per status; 1 = the monitor itself failed
    "ok": 0, "drift": 0, "performance_decay": 0, "insufficient_data": 0, "data_integrity_failure": 3,
}
ALERTING: tuple[Status, ...] = ("drift", "performance_decay", "data_integrity_failure")
RETRAINING: tuple[Status, ...] = ("drift", "performance_decay")


class MonitorError(MlopsError, RuntimeError):
    """Monitoring could not complete (storage or registry unreachable, no champion, ...)."""

    kind = "monitoring failed, nothing alerted or retrained"


class Performance(BaseModel):
    metric: str
    holdout: float
    current: float
    drop: float  # positive = worse; relative for rmse/mae/log_loss
    labelled_rows: int
    decayed: bool


class LabelsJoined(BaseModel):
    """How the labels met the window (labels.py): what was read, joined and refused."""

    read: int  # label rows read
    repeated_labels: int  # (request_id, row) given more than once with one label: used once
    conflicting_labels: int  # given with different labels: not used
    joined_rows: int  # captured rows with exactly one label
    reused_ids: int  # (request_id, row) captured by more than one request: not used
    reused_id_rows: int  # the captured rows of those keys
    replayed_rows: int  # identical copies of a captured row (a retried flush): used once


class RetrainOutcome(BaseModel):
    triggered: bool
    reason: str
    version: str | None = None
    decision: str | None = None
    run_id: str | None = None
    error: str | None = None


class VersionStats(BaseModel):
    """One version's side of a rollout comparison (workloads/monitoring/rollout.py)."""

    version: str
    rows: int  # window rows it answered (shadow: scored)
    labelled_rows: int
    metric: float | None = None  # on its labelled rows; None below the minimum
    drift_share: float | None = None  # share of features whose inputs drifted from the champion's reference


class RolloutOutcome(BaseModel):
    """What the monitor decided about the endpoint's challenger, and whether it was applied."""

    mode: str
    decision: Literal["promote", "roll_back", "wait", "none"]
    reason: str
    metric: str | None = None
    champion: VersionStats | None = None
    challenger: VersionStats | None = None
    agreement: float | None = None  # shadow: share of rows where both answered the same class
    applied: bool = False
    note: str | None = None  # why a decision was not applied (lock held, cooldown)


class MonitorResult(BaseModel):
    status: Status
    reasons: list[str]
    endpoint: str
    model_name: str
    model_version: str
    alias: str
    window: dict[str, Any]
    drift_detected: bool = False
    performance_decayed: bool = False
    drift: DriftReport | None = None
    performance: Performance | None = None
    labels: LabelsJoined | None = None
    alert: AlertOutcome | None = None
    retraining: RetrainOutcome | None = None
    rollout: RolloutOutcome | None = None
    run_id: str
    experiment: str
    report_uri: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        code = EXIT_CODES[self.status]
        return 1 if code == 0 and self.retraining and self.retraining.error else code
