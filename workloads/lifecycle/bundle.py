"""A promotion bundle: one registered version and everything it needs in another environment, as files.

    <dir>/promotion.json          what was exported (`Exported`): the source environment, version and
                                  run (params, metrics, lineage tags, dataset inputs), and the earlier
                                  promotions of this version (its own run's promotion.json)
    <dir>/model/                  the model's artifacts byte for byte (MLmodel with signature, input example)
    <dir>/run/                    the source run's artifacts (spec.yaml, schema.json, candidates.json, ...)
    <dir>/dataset/data.parquet    the training dataset version byte for byte (with --copy-dataset)

`mlops promote` exports into a temporary bundle and imports it in one process. Split (`--to-bundle`
in the source's job, `--from-bundle` in the target's), no process has to reach both environments
and each talks to one tracking server with that environment's credentials (deploy.yml).
Everything is read through the source's tracking server and S3 client; nothing is written there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ValidationError

from workloads.environment import Environment
from workloads.errors import UsageError
from workloads.settings import PromoteSettings

PROMOTION_FILE = "promotion.json"
MODEL_DIR, RUN_DIR, DATASET_FILE = "model", "run", "dataset/data.parquet"
# Run artifacts that describe the run in its own environment, not the version: not carried over.
NOT_COPIED = (PROMOTION_FILE, "report.html", "report.json")
DEFAULT_ALIAS = "champion"


class Exported(BaseModel):
    """The source side of a promotion, as recorded in the bundle and in the target run's promotion.json."""

    environment: str
    tracking_uri: str
    model: str
    version: str
    run_id: str
    experiment: str
    created_ms: int
    aliases: list[str]
    version_tags: dict[str, str]
    run_tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    datasets: list[dict[str, str]]  # the run's dataset inputs: name, digest, source_type, source, schema, profile
    dataset_copied: bool
    previous: dict[str, Any] | None = None  # the source run's own promotion.json: the hop before this one
    exported_at: str

    @property
    def label(self) -> str:
        """`<environment>/<model>/<version>`: the promotion record's value (tag `mlops.promoted_from`)."""
        return f"{self.environment}/{self.model}/{self.version}"

    @property
    def dataset_uri(self) -> str | None:
        return self.version_tags.get("mlops.dataset.uri")


class Bundle:
    """A bundle directory (see the module docstring)."""

    def __init__(self, path: Path, source: Exported):
        self.path, self.source = path, source

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def run_dir(self) -> Path:
        return self.path / RUN_DIR

    @property
    def dataset_file(self) -> Path | None:
        file = self.path / DATASET_FILE
        return file if file.is_file() else None

    @classmethod
    def read(cls, path: Path) -> Bundle:
        record = path / PROMOTION_FILE
        if not record.is_file() or not (path / MODEL_DIR / "MLmodel").is_file():
            raise UsageError(f"--from-bundle {path}: not a promotion bundle (needs {PROMOTION_FILE} and "
                             f"{MODEL_DIR}/MLmodel; written by `mlops promote --to-bundle`)")
        try:
            return cls(path, Exported.model_validate_json(record.read_text()))
        except ValidationError as exc:
            raise UsageError(f"--from-bundle {path}: {PROMOTION_FILE} is invalid ({exc.error_count()} errors)") \
                from None


def export(env: Environment, settings: PromoteSettings, path: Path) -> Bundle:
    """Write the version `settings` names in `env` as a bundle at `path` (created; must be empty)."""
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"--to-bundle {path}: not empty; give a new directory")
    client = env.mlflow_client()
    mv = source_version(client, env, settings)
    run = client.get_run(mv.run_id)
    with env.tracking():
        _download_model(client, mv.source, path / MODEL_DIR)
        previous = _download_run(client, mv.run_id, path / RUN_DIR)
    tags = dict(mv.tags or {})
    copied = settings.copy_dataset and "mlops.dataset.uri" in tags
    if copied:
        _download_object(env, tags["mlops.dataset.uri"], path / DATASET_FILE)
    source = Exported(
        environment=env.outputs.environment, tracking_uri=env.tracking_uri, model=settings.model,
        version=str(mv.version), run_id=mv.run_id, experiment=client.get_experiment(run.info.experiment_id).name,
        created_ms=int(mv.creation_timestamp), aliases=list(mv.aliases or []), version_tags=tags,
        run_tags={k: v for k, v in run.data.tags.items() if k.startswith("mlops.")},
        params=dict(run.data.params), metrics=dict(run.data.metrics),
        datasets=[_dataset(d) for d in run.inputs.dataset_inputs], dataset_copied=copied, previous=previous,
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"))
    (path / PROMOTION_FILE).write_text(source.model_dump_json(indent=2))
    return Bundle(path, source)


def source_version(client: Any, env: Environment, settings: PromoteSettings) -> Any:
    """The ModelVersion `--version N` or `--alias A` (default champion) names; one line when there is none."""
    from mlflow.exceptions import MlflowException

    which = f"version {settings.version}" if settings.version else f"alias {settings.alias or DEFAULT_ALIAS!r}"
    try:
        if settings.version is not None:
            return client.get_model_version(settings.model, str(settings.version))
        return client.get_model_version_by_alias(settings.model, settings.alias or DEFAULT_ALIAS)
    except MlflowException:
        raise UsageError(f"model {settings.model!r} has no {which} in environment {env.outputs.environment!r} "
                         f"({env.tracking_uri})") from None


def _download_model(client: Any, source: str, destination: Path) -> None:
    """The stored model artifacts, byte for byte (inside `env.tracking()`)."""
    import mlflow

    if source.startswith("models:/m-"):  # MLflow 3: a logged model; read its artifact location directly
        location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    else:
        location = source
    with tempfile.TemporaryDirectory() as tmp:
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp))
        (downloaded / "registered_model_meta").unlink(missing_ok=True)  # added by a models:/ download
        shutil.copytree(downloaded, destination)


def _download_run(client: Any, run_id: str, destination: Path) -> dict[str, Any] | None:
    """The run's artifacts (but NOT_COPIED) into `destination`; returns its promotion.json, if any."""
    destination.mkdir(parents=True)
    previous = None
    for item in client.list_artifacts(run_id):
        if item.path == PROMOTION_FILE:
            with tempfile.TemporaryDirectory() as tmp:
                previous = json.loads(Path(client.download_artifacts(run_id, item.path, tmp)).read_text())
        elif item.path not in NOT_COPIED:
            client.download_artifacts(run_id, item.path, str(destination))
    return previous


def _download_object(env: Environment, uri: str, destination: Path) -> None:
    url = urlparse(uri)
    destination.parent.mkdir(parents=True, exist_ok=True)
    body = env.s3.get_object(Bucket=url.netloc, Key=url.path.lstrip("/"))["Body"]
    destination.write_bytes(body.read())


def _dataset(dataset_input: Any) -> dict[str, str]:
    d = dataset_input.dataset
    return {"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
            "schema": d.schema or "", "profile": d.profile or ""}
