"""Two real local stacks: the session's (`local_env`, the source) and a second one (the target).

The source gets two versions of one small churn model: v1 learns the labels (champion), v2 is
trained on shuffled labels (its own gate leaves it challenger). The target starts empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from workloads.data.sample import generate
from workloads.devstack.stack import LocalStack
from workloads.environment import Environment
from workloads.training.job import train
from workloads.training.report import TrainResult
from workloads.training.spec import TrainingSpec


@dataclass(frozen=True)
class Source:
    env: Environment
    name: str
    good: TrainResult  # v1, champion
    bad: TrainResult  # v2, challenger


def small_spec(name: str) -> TrainingSpec:
    return TrainingSpec.parse({
        "name": name, "dataset": {"name": name}, "target": "churned", "exclude": ["customer_id"],
        "metric": "roc_auc", "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
        "search": {"n_iter": 1, "cv": 2}, "promotion": {"margin": 0.002}, "seed": 5,
    })


@pytest.fixture(scope="module")
def _target_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Future[Any]]]:
    """A second local stack, started in the background (it mostly waits for its servers), stopped by its
    own down() at the end."""
    stack = LocalStack(tmp_path_factory.mktemp("target-stack"))
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(stack.up, timeout=180)
        try:
            yield stack, started
        finally:
            wait([started])
            stack.down(snapshot=False)


@pytest.fixture(scope="module")
def target(_target_stack: tuple[LocalStack, Future[Any]], source: Source) -> Environment:
    """The target stack once up; `source` trains meanwhile."""
    stack, started = _target_stack
    started.result()
    return stack.environment()


@pytest.fixture(scope="module")
def source(local_env: Environment) -> Source:
    name = f"lifecycle-{uuid.uuid4().hex[:8]}"
    good = train(small_spec(name), local_env, data=generate(600, 21), progress=False)
    noise = generate(600, 22)
    noise["churned"] = np.random.default_rng(0).permutation(noise["churned"].to_numpy())
    bad = train(small_spec(name), local_env, data=noise, progress=False)
    assert (good.version, good.decision, bad.version, bad.decision) == ("1", "champion", "2", "challenger")
    return Source(local_env, name, good, bad)
