"""What happened to a version after it was trained: its gates, promotions, monitoring and serving.

Sources, all in the environment's tracking server:
- gates: the version's own `mlops.gate.*`/`mlops.decision` tags; for a promoted version also each
  hop's promotion.json (the source's training gate and every promotion's gate); and every later
  version whose gate named it as the champion (`mlops.gate.champion_version`);
- promotions: the chain of promotion.json records (each holds the one before it);
- monitoring: runs in the `monitoring/<endpoint>` experiments (workloads/layout.py) whose params
  name this model and version (`mlops monitor` logs them), with their summary.json (alert,
  retraining) and any other `mlops.*` tags (e.g. rollout decisions);
- serving: the registry keeps the current aliases only, so "where and when served" is assembled
  from evidence (registration, replacements, monitoring) and says what is not recorded.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workloads.training.gate import GateReport

MONITOR_PARAMS = ("endpoint", "alias")
MONITOR_METRICS = ("window.rows", "drift.share", "drift.n_drifted", "drift.max_psi", "metric.drop", "labelled.rows")


class GateDecision(BaseModel):
    kind: str  # training, promotion, challenged by vN
    environment: str
    version: str  # the version the gate decided on, in that environment
    at: str | None = None
    report: GateReport


class Promotion(BaseModel):
    source: str  # <environment>/<model>/<version>
    source_run_id: str
    target: str  # the environment promoted into
    at: str | None = None
    run_id: str | None = None  # the promotion's run in the target
    by: str | None = None


class MonitoringEntry(BaseModel):
    run_id: str
    endpoint: str | None
    alias: str | None
    started: str
    run_status: str
    status: str | None  # mlops.monitor.status: ok, drift, performance_decay, ...
    error: str | None = None
    metrics: dict[str, float] = {}
    alert: dict[str, Any] | None = None
    retraining: dict[str, Any] | None = None
    tags: dict[str, str] = {}  # other mlops.* tags (rollout decisions, ...)


class Served(BaseModel):
    aliases_now: list[str]
    events: list[dict[str, str]]  # {"at": ..., "what": ...}, oldest first
    missing: list[str]


def when(ms: int | float | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="seconds")


def hops(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The promotion records of a version, oldest first (each record's source holds the previous one)."""
    found: list[dict[str, Any]] = []
    while record:
        found.insert(0, record)
        record = record["source"].get("previous")
    return found


def gate_decisions(mv: Any, environment: str, chain: list[dict[str, Any]], versions: list[Any]) -> list[GateDecision]:
    """Every recorded gate decision about this version, oldest first, with both sides' numbers."""
    decisions: list[GateDecision] = []
    if chain:
        first = chain[0]["source"]
        trained = GateReport.from_tags(first["version_tags"])
        if trained is not None:
            decisions.append(GateDecision(kind="training", environment=first["environment"],
                                          version=first["version"], at=when(first["created_ms"]), report=trained))
        for i, hop in enumerate(chain):
            decided = chain[i + 1]["source"]["version"] if i + 1 < len(chain) else str(mv.version)
            decisions.append(GateDecision(kind="promotion", environment=hop["target"]["environment"],
                                          version=decided, at=hop["promoted_at"],
                                          report=GateReport.model_validate(hop["gate"])))
    else:
        own = GateReport.from_tags(dict(mv.tags or {}))
        if own is not None:
            decisions.append(GateDecision(kind="training", environment=environment, version=str(mv.version),
                                          at=when(mv.creation_timestamp), report=own))
    for other in sorted(versions, key=lambda v: int(v.version)):
        tags = dict(other.tags or {})
        if tags.get("mlops.gate.champion_version") == str(mv.version) and str(other.version) != str(mv.version):
            report = GateReport.from_tags(tags)
            if report is not None:
                decisions.append(GateDecision(kind=f"challenged by v{other.version}", environment=environment,
                                              version=str(other.version), at=when(other.creation_timestamp),
                                              report=report))
    return decisions


def promotions(chain: list[dict[str, Any]]) -> list[Promotion]:
    return [Promotion(source=f"{h['source']['environment']}/{h['source']['model']}/{h['source']['version']}",
                      source_run_id=h["source"]["run_id"], target=h["target"]["environment"], at=h["promoted_at"],
                      run_id=h["target"]["run_id"], by=h.get("promoted_by")) for h in chain]


def monitoring(client: Any, name: str, version: str, limit: int) -> list[MonitoringEntry]:
    """The newest `limit` monitoring runs that watched this version, newest first."""
    if limit == 0:
        return []
    experiments = client.search_experiments(filter_string="name LIKE 'monitoring/%'")
    if not experiments:
        return []
    runs = client.search_runs([e.experiment_id for e in experiments],
                              filter_string=f"params.model = '{name}' and params.model_version = '{version}'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return [_entry(client, run) for run in runs]


def _entry(client: Any, run: Any) -> MonitoringEntry:
    tags, params, values = run.data.tags, run.data.params, run.data.metrics
    summary = _summary(client, run.info.run_id)
    shown = {k: v for k, v in values.items() if k in MONITOR_METRICS or k.startswith(("metric.", "holdout."))}
    other = {k: v for k, v in tags.items() if k.startswith("mlops.") and k not in (
        "mlops.endpoint", "mlops.monitor.status", "mlops.monitor.state", "mlops.monitor.error")}
    return MonitoringEntry(
        run_id=run.info.run_id, endpoint=params.get("endpoint") or tags.get("mlops.endpoint"),
        alias=params.get("alias"), started=when(run.info.start_time) or "", run_status=run.info.status,
        status=tags.get("mlops.monitor.status"), error=tags.get("mlops.monitor.error"), metrics=shown,
        alert=summary.get("alert"), retraining=summary.get("retraining"), tags=other)


def _summary(client: Any, run_id: str) -> dict[str, Any]:
    """The run's summary.json (alert and retraining outcomes); {} when it has none (a failed run)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return dict(json.loads(Path(client.download_artifacts(run_id, "summary.json", tmp)).read_text()))
        except Exception:  # no summary (failed or interrupted run) or unreadable: report what the tags say
            return {}


def served(mv: Any, environment: str, chain: list[dict[str, Any]], decisions: list[GateDecision],
           watched: list[MonitoringEntry]) -> Served:
    """Where and when the version was served, from the evidence the registry and the runs hold."""
    tags = dict(mv.tags or {})
    events = [{"at": when(mv.creation_timestamp) or "",
               "what": f"registered in {environment} with alias {tags.get('mlops.decision', '?')}"
                       + (f" (promoted from {tags['mlops.promoted_from']})" if "mlops.promoted_from" in tags else "")}]
    for d in decisions:
        if d.kind.startswith("challenged") and d.report.decision == "champion":
            events.append({"at": d.at or "", "what": f"champion alias moved to v{d.version} (its gate beat this one)"})
    spans: dict[tuple[str, str], list[str]] = {}
    for entry in watched:
        spans.setdefault((entry.endpoint or "?", entry.alias or "?"), []).append(entry.started)
    for (endpoint, alias), times in spans.items():
        events.append({"at": min(times), "what": f"endpoint {endpoint} served it as @{alias}: {len(times)} "
                                                 f"monitoring run(s) from {min(times)} to {max(times)}"})
    missing = ["MLflow keeps no alias history: alias moves made outside `mlops train`/`mlops promote` (by hand) "
               "and their times are not recorded",
               "when each serving pod loaded or dropped the version is in the serving logs, not in the registry"]
    if not watched:
        missing.append(f"no monitoring run in {environment} names this version: no evidence an endpoint served it")
    missing += [f"serving and monitoring in {h['source']['environment']} are recorded there (run `mlops model "
                f"report {h['source']['model']} {h['source']['version']}` against it)" for h in chain]
    return Served(aliases_now=sorted(mv.aliases or []), events=sorted(events, key=lambda e: e["at"]), missing=missing)
