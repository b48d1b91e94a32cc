"""`mlops model report NAME VERSION`: everything recorded about one version, in one document.

Read from the environment's tracking server only: the version and its tags, its run (params,
metrics, dataset inputs) and artifacts (spec.yaml, schema.json, candidates.json, promotion.json),
the model's other versions, and the monitoring runs (history.py). The answer to "why is this
model in prod": the data and code it came from, how it was chosen, every gate with both sides'
numbers, how it got here, and what watched it since. JSON (`VersionReport`) and HTML (render.py),
both also logged to the version's run as `report.json` and `report.html`.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workloads.environment import Environment
from workloads.errors import UsageError
from workloads.lifecycle import history
from workloads.lifecycle.history import GateDecision, MonitoringEntry, Promotion, Served
from workloads.settings import ReportSettings

ARTIFACTS = ("spec.yaml", "schema.json", "candidates.json", "promotion.json")


class VersionReport(BaseModel):
    model: str
    version: str
    environment: str
    tracking_uri: str
    generated_at: str
    created: str | None
    run_id: str
    model_uri: str
    aliases: list[str]
    dataset: dict[str, Any]  # name, digest, uri (and the source's, when promoted), inputs, schema
    code: dict[str, str | None]  # commit, dirty, image
    spec: dict[str, Any]  # hash, yaml
    search: list[dict[str, Any]]  # the candidates, best first
    metrics: dict[str, float]  # holdout.*, cv.*, gate.* of the run
    params: dict[str, str]
    decision: str | None
    reason: str | None
    gates: list[GateDecision]
    promotions: list[Promotion]
    monitoring: list[MonitoringEntry]
    served: Served


def build(settings: ReportSettings, env: Environment) -> VersionReport:
    """The report of `settings.name` v`settings.version` in `env`."""
    from mlflow.exceptions import MlflowException

    client = env.mlflow_client()
    name, version = settings.name, str(settings.version)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        raise UsageError(f"model {name!r} has no version {version} in environment {env.outputs.environment!r} "
                         f"({env.tracking_uri})") from None
    run = client.get_run(mv.run_id)
    with env.tracking():
        files = _artifacts(client, mv.run_id)
    tags = dict(mv.tags or {})
    chain = history.hops(json.loads(files["promotion.json"]) if "promotion.json" in files else None)
    versions = client.search_model_versions(f"name='{name}'")
    gates = history.gate_decisions(mv, env.outputs.environment, chain, versions)
    watched = history.monitoring(client, name, version, settings.monitoring_runs)
    return VersionReport(
        model=name, version=version, environment=env.outputs.environment, tracking_uri=env.tracking_uri,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"), created=history.when(mv.creation_timestamp),
        run_id=mv.run_id, model_uri=mv.source, aliases=sorted(mv.aliases or []),
        dataset=_dataset(tags, run, files), code={"commit": tags.get("mlops.git.commit"),
                                                  "dirty": tags.get("mlops.git.dirty"), "image": tags.get("mlops.image")},
        spec={"hash": tags.get("mlops.spec.hash"), "yaml": files.get("spec.yaml")},
        search=json.loads(files.get("candidates.json", "[]")),
        metrics={k: v for k, v in sorted(run.data.metrics.items())}, params=dict(sorted(run.data.params.items())),
        decision=tags.get("mlops.decision"), reason=tags.get("mlops.decision.reason"), gates=gates,
        promotions=history.promotions(chain), monitoring=watched,
        served=history.served(mv, env.outputs.environment, chain, gates, watched))


def _artifacts(client: Any, run_id: str) -> dict[str, str]:
    """The run's small text artifacts the report reads, by name (missing ones left out)."""
    present = {item.path for item in client.list_artifacts(run_id)}
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ARTIFACTS:
            if name in present:
                found[name] = Path(client.download_artifacts(run_id, name, tmp)).read_text()
    return found


def _dataset(tags: dict[str, str], run: Any, files: dict[str, str]) -> dict[str, Any]:
    return {
        "name": tags.get("mlops.dataset.name"), "digest": tags.get("mlops.dataset.digest"),
        "uri": tags.get("mlops.dataset.uri"), "source_uri": tags.get("mlops.promoted_from.dataset_uri"),
        "target": tags.get("mlops.target"), "task": tags.get("mlops.task"),
        "split": {"seed": tags.get("mlops.split.seed"), "holdout_fraction": tags.get("mlops.split.holdout_fraction")},
        "dropped_features": tags.get("mlops.features.dropped"),
        "inputs": [{"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source,
                    "profile": d.dataset.profile} for d in run.inputs.dataset_inputs],
        "schema": json.loads(files["schema.json"]) if "schema.json" in files else None,
    }


def log(env: Environment, report: VersionReport, html: str) -> str:
    """report.json and report.html into the version's run; returns the run's artifact URI."""
    client = env.mlflow_client()
    with env.tracking():
        client.log_text(report.run_id, report.model_dump_json(indent=2), "report.json")
        client.log_text(report.run_id, html, "report.html")
    return f"{client.get_run(report.run_id).info.artifact_uri}/report.html"


def summary_table(report: VersionReport) -> Any:
    """The gist for a terminal (rich); the HTML and JSON hold everything."""
    from rich.table import Table

    table = Table(title=f"{report.model} v{report.version} in {report.environment}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [("aliases", ", ".join(report.aliases) or "-"), ("decision", f"{report.decision}: {report.reason}"),
            ("dataset", f"{report.dataset['name']} {report.dataset['digest']} ({report.dataset['uri']})"),
            ("code", f"{report.code.get('commit')} image {report.code.get('image') or '-'}")]
    rows += [(f"gate: {g.kind}", f"{g.environment} v{g.version} {g.report.decision}: {g.report.reason}")
             for g in report.gates]
    rows += [("promoted", f"from {p.source} at {p.at} (run {p.run_id})") for p in report.promotions]
    rows.append(("monitoring", f"{len(report.monitoring)} run(s)"
                 + (f", last {report.monitoring[0].status} at {report.monitoring[0].started}" if report.monitoring
                    else "")))
    for key, value in rows:
        table.add_row(key, value)
    return table
