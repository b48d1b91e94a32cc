"""The search across pods: how shards and the selection step find each other through MLflow.

Shards and select must agree on a group id without talking to each other. By default it is
the spec hash plus the data digest: the same spec on the same data is the same search (its
results are deterministic), so a re-run shard just adds a newer run and select takes the
latest finished one per shard. `--group` / MLOPS_SEARCH_GROUP can name a group explicitly.
"""

from __future__ import annotations

import time
from typing import Any

from workloads.training.errors import TrainingError
from workloads.training.search import Candidate, Planned
from workloads.training.spec import TrainingSpec
from workloads.training.tracking import CANDIDATES_ARTIFACT

GROUP_TAG, SHARD_TAG, SHARDS_TAG = "mlops.search.group", "mlops.search.shard", "mlops.search.shards"
SPEC_HASH_TAG, DIGEST_TAG = "mlops.spec.hash", "mlops.dataset.digest"


def default_group(spec: TrainingSpec, digest: str) -> str:
    return f"{spec.spec_hash()}-{digest[:12]}"


def finished_shards(client: Any, experiment_id: str, group: str, shards: int) -> tuple[dict[int, Any], dict[int, str]]:
    """The latest FINISHED run per shard of `group`, and the latest status of shards without one."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{GROUP_TAG}` = '{group}' and tags.`{SHARDS_TAG}` = '{shards}'",
        order_by=["attributes.start_time DESC"], max_results=1000,
    )
    finished: dict[int, Any] = {}
    latest: dict[int, str] = {}
    for r in runs:  # newest first
        shard = int(r.data.tags[SHARD_TAG])
        latest.setdefault(shard, r.info.status)
        if r.info.status == "FINISHED":
            finished.setdefault(shard, r)
    return finished, {s: latest.get(s, "no run") for s in range(shards) if s not in finished}


def wait_for_shards(
    client: Any, experiment: str, group: str, shards: int, *, timeout: float, poll_seconds: float
) -> dict[int, Any]:
    """Every shard's latest finished run, polling until `timeout`; TrainingError naming the missing ones."""
    deadline = time.monotonic() + timeout
    finished: dict[int, Any]
    while True:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            finished, missing = {}, {s: "no run" for s in range(shards)}
        else:
            finished, missing = finished_shards(client, found.experiment_id, group, shards)
        if not missing:
            return finished
        if time.monotonic() >= deadline:
            listed = ", ".join(f"{s} ({status})" for s, status in sorted(missing.items()))
            raise TrainingError(
                f"search group {group!r}: {len(missing)} of {shards} shard(s) have no finished run after "
                f"{timeout:g} s: {listed}; run `mlops train SPEC --shard I --shards {shards}` for each "
                "(with the same spec and data); nothing was registered"
            )
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def gather_candidates(
    finished: dict[int, Any], planned: list[Planned], spec: TrainingSpec, digest: str, group: str
) -> list[Candidate]:
    """The union of the shards' candidates: each planned one exactly once, from this spec and data.

    Reads the shards' artifacts through MLflow's fluent API: call inside `Environment.tracking()`.
    """
    import mlflow

    candidates: list[Candidate] = []
    for shard, run in sorted(finished.items()):
        for key, expected in ((SPEC_HASH_TAG, spec.spec_hash()), (DIGEST_TAG, digest)):
            if run.data.tags.get(key) != expected:
                raise TrainingError(f"shard {shard} (run {run.info.run_id}) has {key} {run.data.tags.get(key)}, "
                                    f"this job {expected}: re-run the shards with the same spec and data")
        logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{CANDIDATES_ARTIFACT}")
        candidates += [Candidate.model_validate(c) for c in logged]
    # Each candidate exactly once: what a single unsharded search would have evaluated.
    got = sorted(c.index for c in candidates)
    if got != list(range(len(planned))):
        raise TrainingError(f"search group {group!r}: the shards evaluated candidates {got}, expected "
                            f"0..{len(planned) - 1} once each; nothing was registered")
    # The spec's own parameter values (typed), with the shards' scores.
    return [c.model_copy(update={"params": planned[c.index].params}) for c in candidates]
