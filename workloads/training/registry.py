"""Registering a version, last: tagged with its lineage and aliased, or not left behind at all."""

from __future__ import annotations

import time
from typing import Any

from workloads.training.errors import TrainingError


def register(
    client: Any, name: str, model_uri: str, model_id: str | None, run_id: str, tags: dict[str, str], alias: str
) -> str:
    """Register, tag and alias one version; on any failure delete it again and re-raise."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, model_id=model_id, await_creation_for=0
    )
    try:
        _wait_ready(client, name, version.version)
        set_alias(client, name, alias, version.version)
    except BaseException:
        try:
            client.delete_model_version(name, version.version)
        except Exception as cleanup:  # report both: the version may need manual removal
            raise TrainingError(
                f"registering {name} v{version.version} failed and deleting it failed too: {cleanup}"
            ) from cleanup
        raise
    return str(version.version)


def set_alias(client: Any, name: str, alias: str, version: str) -> None:
    """Point `alias` at `version` (the last step: tests inject a failure here)."""
    client.set_registered_model_alias(name, alias, version)


def _wait_ready(client: Any, name: str, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise TrainingError(f"{name} v{version}: registration status {status}")
        time.sleep(0.2)
