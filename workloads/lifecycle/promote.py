"""`mlops promote`: a registered version copied into another environment, gated there, registered last.

1. export (bundle.py): the version (`--version N`, else `--alias A`, default champion), its run's
   params, metrics, lineage tags and dataset inputs, its run's artifacts, the model's artifacts
   byte for byte (signature and input example live in them) and, by default, the dataset version;
2. idempotency: a target version whose `mlops.promoted_from` (and source run id) match is the
   promotion already done: nothing is created, its version and decision are reported;
3. the dataset version is stored in the target's data bucket under the same digest (content
   checked against the digest first), so monitoring and retraining in the target can read it
   (content-addressed and referenced by nothing until registration: a failed attempt may leave it,
   the next one reuses it);
4. one run in the target (same experiment name): params, metrics (but the source's gate
   numbers, which the target's gate replaces), lineage tags, dataset inputs, run artifacts,
   a logged model with the artifacts (MLmodel names the target's model id and run: `retarget`),
   the target's gate (regate.py), promotion.json;
5. register last (workloads/training/registry.py), alias per the target's gate. Any failure
   before that deletes the logged model and ends the run FAILED; registration deletes its own
   version when aliasing fails. Nothing half-registered stays in the target.

The promotion record: tags `mlops.promoted_from=<environment>/<model>/<version>` (plus its run id
and tracking URI), `mlops.promoted_at`, `mlops.promoted_by_run` (the target run),
`mlops.promoted_by` (the CI run URL, else user@host) and `mlops.promotion.chain` (every hop).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from workloads.data import dataset
from workloads.data.schema import DatasetSchema
from workloads.environment import Environment
from workloads.errors import MlopsError, UsageError
from workloads.lifecycle.bundle import PROMOTION_FILE, Bundle, Exported, export, source_version
from workloads.lifecycle.regate import PromotionError, target_gate
from workloads.settings import PromoteSettings
from workloads.training.gate import GateReport
from workloads.training.registry import register
from workloads.training.tracking import experiment_id, tracked

PROMOTED_FROM, CHAIN = "mlops.promoted_from", "mlops.promotion.chain"
STATE = "mlops.promotion.state"
# Source tags the target replaces: the source's gate decided the source's alias, not this one.
REPLACED = ("mlops.decision", "mlops.gate.", "mlops.promot", "mlops.run_id", "mlops.dataset.uri")


class PromotionResult(BaseModel):
    model: str
    promoted_from: str  # <environment>/<model>/<version>
    source_run_id: str
    environment: str | None = None  # the target (None: only exported to a bundle)
    created: bool = False  # False: already promoted (or only exported)
    version: str | None = None
    decision: str | None = None
    reason: str | None = None
    run_id: str | None = None
    gate: GateReport | None = None
    dataset_uri: str | None = None
    bundle: str | None = None
    seconds: float = 0.0


def promote(settings: PromoteSettings, source: Environment | Path, target: Environment | Path) -> PromotionResult:
    """Promote between environments; a Path is a bundle directory (export to it, or import from it)."""
    started = time.monotonic()
    if isinstance(target, Path):
        if isinstance(source, Path):
            raise UsageError("--from-bundle and --to-bundle: one side must be an environment")
        src = export(source, settings, target).source
        return PromotionResult(model=src.model, promoted_from=src.label, source_run_id=src.run_id,
                               bundle=str(target), seconds=round(time.monotonic() - started, 2))
    if isinstance(source, Path):
        bundle = Bundle.read(source)
        held = bundle.source
        if held.model != settings.model or settings.version not in (None, int(held.version)) or settings.alias:
            raise UsageError(f"--from-bundle {source} holds {held.model} v{held.version} (give only the model name)")
        return import_bundle(bundle, target, started)
    if source.tracking_uri == target.tracking_uri:
        raise UsageError(f"--from and --to are the same environment ({target.tracking_uri})")
    mv = source_version(source.mlflow_client(), source, settings)
    label = f"{source.outputs.environment}/{settings.model}/{mv.version}"
    existing = already_promoted(target.mlflow_client(), settings.model, label, mv.run_id)
    if existing is not None:  # before downloading anything
        return _done(PromotionResult(model=settings.model, promoted_from=label, source_run_id=mv.run_id,
                                     environment=target.outputs.environment), existing, started)
    with tempfile.TemporaryDirectory(prefix="mlops-promote-") as tmp:
        return import_bundle(export(source, settings, Path(tmp) / "bundle"), target, started)


def import_bundle(bundle: Bundle, env: Environment, started: float) -> PromotionResult:
    """Steps 2 to 5 of the module docstring."""
    src, client = bundle.source, env.mlflow_client()
    if env.tracking_uri == src.tracking_uri:
        raise UsageError(f"the bundle comes from this environment ({env.tracking_uri}): nothing to promote")
    result = PromotionResult(model=src.model, promoted_from=src.label, source_run_id=src.run_id,
                             environment=env.outputs.environment)
    existing = already_promoted(client, src.model, src.label, src.run_id)
    if existing is not None:
        return _done(result, existing, started)
    dataset_uri = copy_dataset(bundle, env) if bundle.dataset_file else src.dataset_uri
    with tracked(env):
        experiment = experiment_id(client, src.experiment)
        with promotion_run(client, experiment, src, env.outputs.environment) as run:
            log_source(client, run.run_id, bundle, dataset_uri)
            log_model(client, experiment, run, bundle)
            gate = target_gate(client, env, src, bundle.model_dir, bundle.run_dir)
            tags = promotion_tags(src, run.run_id, dataset_uri) | gate.tags()
            client.log_batch(run.run_id, metrics=_metrics(gate.metrics()), tags=_tags(tags))
            client.log_dict(run.run_id, _record(src, env, run.run_id, gate, tags), PROMOTION_FILE)
            version = register(client, src.model, f"models:/{run.model_id}", run.model_id, run.run_id,
                               _kept(src.version_tags) | tags, gate.decision)
    return result.model_copy(update={
        "created": True, "version": version, "decision": gate.decision, "reason": gate.reason,
        "run_id": run.run_id, "gate": gate, "dataset_uri": dataset_uri,
        "seconds": round(time.monotonic() - started, 2)})


def already_promoted(client: Any, model: str, label: str, run_id: str) -> Any:
    """The target version promoted from exactly this source version (label and run), if any."""
    for mv in client.search_model_versions(f"name='{model}'"):
        tags = mv.tags or {}
        if tags.get(PROMOTED_FROM) == label and tags.get(f"{PROMOTED_FROM}.run_id") == run_id:
            return mv
    return None


def _done(result: PromotionResult, existing: Any, started: float) -> PromotionResult:
    """The promotion done before: nothing created, its version and decision reported."""
    tags = existing.tags or {}
    return result.model_copy(update={
        "version": str(existing.version), "decision": tags.get("mlops.decision"), "run_id": existing.run_id,
        "reason": f"already promoted as v{existing.version} at {tags.get('mlops.promoted_at')}",
        "gate": GateReport.from_tags(tags), "dataset_uri": tags.get("mlops.dataset.uri"),
        "seconds": round(time.monotonic() - started, 2)})


def copy_dataset(bundle: Bundle, env: Environment) -> str:
    """The bundle's dataset version stored in `env` under its digest (checked); its schema if `env` has none."""
    src, file = bundle.source, bundle.dataset_file
    assert file is not None
    name, digest = src.version_tags["mlops.dataset.name"], src.version_tags["mlops.dataset.digest"]
    df = pd.read_parquet(file)
    if dataset.digest(df) != digest:
        raise PromotionError(f"the bundle's dataset does not match its digest {digest}: not copied, nothing promoted")
    schema_file = bundle.run_dir / "schema.json"
    if schema_file.is_file() and dataset.load_schema(name, env) is None:
        dataset.save_schema(name, DatasetSchema.model_validate_json(schema_file.read_text()), env)
    return dataset.store(df, name, env, content_digest=digest).uri


@dataclass
class OpenRun:
    run_id: str
    model_id: str | None = None  # the logged model, once created (deleted again on failure)


@contextmanager
def promotion_run(client: Any, experiment: str, src: Exported, environment: str) -> Iterator[OpenRun]:
    """The target run: FINISHED when the block completes; on any failure FAILED, with its logged model deleted."""
    created = client.create_run(experiment, run_name=f"promote-{src.model}-v{src.version}-from-{src.environment}",
                                tags={STATE: "running", PROMOTED_FROM: src.label})
    run = OpenRun(created.info.run_id)
    try:
        yield run
    except BaseException as exc:
        _undo(client, run, exc)
        if isinstance(exc, MlopsError) or not isinstance(exc, Exception):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PromotionError(f"{src.label} into {environment}: {type(exc).__name__}: {first_line}; "
                             f"nothing registered (run {run.run_id} FAILED)") from exc
    client.set_tag(run.run_id, STATE, "complete")
    client.set_terminated(run.run_id, "FINISHED")


def _undo(client: Any, run: OpenRun, exc: BaseException) -> None:
    """Best effort: when the tracking server is what failed, the original error still gets out."""
    steps = [lambda: client.set_tag(run.run_id, STATE, "failed"),
             lambda: client.set_tag(run.run_id, "mlops.promotion.error", f"{type(exc).__name__}: {exc}"[:5000]),
             lambda: client.set_terminated(run.run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")]
    if run.model_id is not None:
        steps.insert(0, lambda: client.delete_logged_model(run.model_id))
    for step in steps:
        try:
            step()
        except Exception:  # noqa: S112 - keep undoing; the original error is what gets raised
            continue


def log_source(client: Any, run_id: str, bundle: Bundle, dataset_uri: str | None) -> None:
    """The source run's params, metrics (not its gate's), lineage tags, dataset inputs and artifacts."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Param

    src = bundle.source
    params = [Param(k, v) for k, v in src.params.items()]
    for start in range(0, len(params), 100):  # log_batch takes 100 params per call
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_batch(run_id, metrics=_metrics({k: v for k, v in src.metrics.items() if not k.startswith("gate.")}),
                     tags=_tags(_kept(src.run_tags)))
    inputs = []
    for d in src.datasets:
        source = json.dumps({"uri": dataset_uri}) if src.dataset_copied and d["source_type"] == "s3" else d["source"]
        inputs.append(DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], source, d["schema"] or None,
                                           d["profile"] or None), [InputTag("mlflow.data.context", "training")]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    if any(bundle.run_dir.iterdir()):
        client.log_artifacts(run_id, str(bundle.run_dir))


def log_model(client: Any, experiment: str, run: OpenRun, bundle: Bundle) -> None:
    """A logged model in the target holding the bundle's model artifacts unchanged."""
    from mlflow.entities import LoggedModelOutput

    model = client.create_logged_model(experiment, name="model", source_run_id=run.run_id,
                                       tags={PROMOTED_FROM: bundle.source.label})
    run.model_id = model.model_id
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(bundle.model_dir, staged)
        mlmodel = staged / "MLmodel"
        mlmodel.write_text(retarget(mlmodel.read_text(), model.model_id, run.run_id))
        client.log_model_artifacts(model.model_id, str(staged))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, 0)])


def retarget(mlmodel: str, model_id: str, run_id: str) -> str:
    """The MLmodel file naming the target's logged model and run; every other byte unchanged.

    MLflow resolves a model's info through the `model_id` in its MLmodel (the source's id does not
    exist in the target); `model_uuid` keeps naming the artifact's origin, as promotion.json does.
    """
    lines = mlmodel.splitlines(keepends=True)
    for i, line in enumerate(lines):
        for key, value in (("model_id", model_id), ("run_id", run_id)):
            if re.match(rf"{key}: \S+\s*$", line):
                lines[i] = f"{key}: {value}\n"
    return "".join(lines)


def promotion_tags(src: Exported, run_id: str, dataset_uri: str | None) -> dict[str, str]:
    chain = src.version_tags.get(CHAIN)
    tags = {
        PROMOTED_FROM: src.label, f"{PROMOTED_FROM}.run_id": src.run_id,
        f"{PROMOTED_FROM}.tracking_uri": src.tracking_uri,
        "mlops.promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlops.promoted_by_run": run_id, "mlops.promoted_by": actor(),
        CHAIN: f"{chain} > {src.label}" if chain else src.label, "mlops.run_id": run_id,
    }
    if src.dataset_uri:
        tags |= {f"{PROMOTED_FROM}.dataset_uri": src.dataset_uri, "mlops.dataset.uri": dataset_uri or src.dataset_uri}
    return tags


def actor() -> str:
    """Who promoted: the CI run's URL in GitHub Actions, else user@host."""
    if os.environ.get("GITHUB_RUN_ID"):
        return (f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/"
                f"{os.environ.get('GITHUB_REPOSITORY', '')}/actions/runs/{os.environ['GITHUB_RUN_ID']}")
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _record(src: Exported, env: Environment, run_id: str, gate: GateReport, tags: dict[str, str]) -> dict[str, Any]:
    """promotion.json in the target run: this hop, and through `source.previous` every earlier one."""
    return {"source": src.model_dump(mode="json"), "gate": gate.model_dump(mode="json"),
            "target": {"environment": env.outputs.environment, "tracking_uri": env.tracking_uri, "run_id": run_id},
            "promoted_at": tags["mlops.promoted_at"], "promoted_by": tags["mlops.promoted_by"],
            "dataset_uri": tags.get("mlops.dataset.uri")}


def _kept(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith("mlops.") and not k.startswith(REPLACED)}


def _tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _metrics(values: dict[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]
