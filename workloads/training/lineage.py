"""Lineage tags: which code, image and data a run and its model version came from.

Code: in a checkout, `git rev-parse HEAD` and whether the checkout has uncommitted changes
(`mlops.git.dirty`). In the workload image there is no `.git`: the build passes the commit and
the image reference as build arguments, exposed as `MLOPS_GIT_COMMIT` and `MLOPS_IMAGE`
(workloads/Dockerfile). When set, the variables win over the checkout (the image is what runs).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from workloads.data.dataset import DatasetVersion
from workloads.training.metrics import Metric, Task
from workloads.training.spec import TrainingSpec

COMMIT_ENV, IMAGE_ENV = "MLOPS_GIT_COMMIT", "MLOPS_IMAGE"
COMMIT_TAG, DIRTY_TAG, IMAGE_TAG = "mlops.git.commit", "mlops.git.dirty", "mlops.image"


def _git(args: list[str], cwd: Path | None) -> str | None:
    """`git ARGS` output, or None outside a checkout (or without git)."""
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_commit(cwd: Path | None = None) -> str | None:
    return (_git(["rev-parse", "HEAD"], cwd) or "").strip() or None


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Uncommitted changes to tracked or untracked, not ignored, files; None outside a checkout."""
    status = _git(["status", "--porcelain"], cwd)
    return None if status is None else bool(status.strip())


def code_tags(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`mlops.git.commit`, `mlops.git.dirty` and `mlops.image`, for what is known."""
    environ = os.environ if environ is None else environ
    tags: dict[str, str] = {}
    if environ.get(IMAGE_ENV):
        tags[IMAGE_TAG] = environ[IMAGE_ENV]
    if environ.get(COMMIT_ENV):  # built into the image: the checkout (if any) is not what runs
        return tags | {COMMIT_TAG: environ[COMMIT_ENV]}
    commit = git_commit(cwd)
    if commit is None:
        return tags
    return tags | {COMMIT_TAG: commit, DIRTY_TAG: str(bool(git_dirty(cwd))).lower()}


def data_tags(spec: TrainingSpec, version: DatasetVersion, task: Task, metric: Metric) -> dict[str, str]:
    """The dataset version, the spec and the split a model was trained and scored with."""
    return {
        "mlops.dataset.name": spec.dataset.name,
        "mlops.dataset.digest": version.digest,
        "mlops.dataset.uri": version.uri,
        "mlops.spec.hash": spec.spec_hash(),
        "mlops.target": spec.target,
        "mlops.task": task,
        "mlops.metric": metric.name,
        "mlops.split.seed": str(spec.seed),
        "mlops.split.holdout_fraction": str(spec.holdout_fraction),
    }
