"""Shadow and canary gated by monitoring, end to end on the session's local stack.

Real `mlops serve` endpoints (tests/serving/helpers.py) answer real HTTP requests and capture them;
labels arrive later as a CSV keyed by the server's request ids; the monitor then compares champion
and challenger on that window and promotes or rolls back through the registry; the endpoint picks
the outcome up on reload. Models are trained by the training package (lineage tags the monitor needs).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving.helpers import Endpoint, read_captures
from workloads.data.sample import generate
from workloads.environment import Environment, StackOutputs
from workloads.monitoring.monitor import monitor
from workloads.serving.rollout import bucket
from workloads.settings import MonitorSettings

pytestmark = pytest.mark.servers
ROWS_PER_REQUEST = 10


@pytest.fixture
def env(local_stack: StackOutputs, tmp_path: Path) -> Environment:
    return Environment(local_stack, tmp_path)


def train_version(env: Environment, name: str, data: pd.DataFrame, dataset: str) -> str:
    from workloads.training.job import train
    from workloads.training.spec import TrainingSpec

    spec = TrainingSpec.parse({
        "name": name, "dataset": {"name": dataset}, "target": "churned", "exclude": ["customer_id"],
        "metric": "roc_auc", "models": [{"family": "logistic_regression", "search_space": {"C": [1.0]}}],
        "search": {"n_iter": 1, "cv": 2}, "seed": 3,
    })
    return str(train(spec, env, data=data, progress=False).version)


@pytest.fixture(scope="module")
def versions(local_stack: StackOutputs) -> dict[str, str]:
    """One model, three versions: v1 on the original rule, `better` on the rule live traffic now follows,
    `worse` on shuffled labels (it learns nothing)."""
    env, name = Environment(local_stack), f"rollout-{uuid.uuid4().hex[:6]}"
    noise = generate(600, seed=4)
    noise["churned"] = np.random.default_rng(4).permutation(noise["churned"].to_numpy())
    return {"name": name, "v1": train_version(env, name, generate(600, seed=1), f"{name}-a"),
            "better": train_version(env, name, generate(600, seed=2, concept_drift=1.0), f"{name}-b"),
            "worse": train_version(env, name, noise, f"{name}-c")}  # each its own dataset (and schema)


def champion_and_challenger(env: Environment, versions: dict[str, str], challenger: str) -> tuple[str, str, str]:
    """v1 as champion and `challenger` as challenger, whatever the gates said when they were trained."""
    name, v1, v2 = versions["name"], versions["v1"], versions[challenger]
    client = env.mlflow_client()
    client.set_registered_model_alias(name, "champion", v1)
    client.set_registered_model_alias(name, "challenger", v2)
    return name, v1, v2


def send(ep: Endpoint, traffic: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """Traffic in requests of ROWS_PER_REQUEST rows: (server request id, answering version, rows) each.
    Every request must succeed: a rollout never adds a failure."""
    sent = []
    for start in range(0, len(traffic), ROWS_PER_REQUEST):
        rows = traffic.iloc[start:start + ROWS_PER_REQUEST]
        features = rows.drop(columns=["churned", "customer_id"])
        body = json.dumps({"dataframe_split": features.to_dict(orient="split", index=False)})
        answer = ep.client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        sent.append((answer.headers["x-request-id"], answer.headers["x-model-version"], rows))
    return sent


def write_labels(sent: list[tuple[str, str, pd.DataFrame]], path: Path) -> str:
    pd.DataFrame([{"request_id": rid, "row": i, "label": label} for rid, _, rows in sent
                  for i, label in enumerate(rows["churned"])]).to_csv(path, index=False)
    return str(path)


def captured(env: Environment, endpoint: str, rows: int, column: str) -> pd.DataFrame:
    """The endpoint's captures once `rows` rows with `column` set have been flushed (polled)."""
    deadline = time.monotonic() + 20
    while True:
        frame = read_captures(env, endpoint)
        if len(frame) and column in frame and frame[column].notna().sum() >= rows or time.monotonic() > deadline:
            return frame
        time.sleep(0.3)


def start(name: str, endpoint: str, workdir: Path, log: Path, *rollout: str) -> Endpoint:
    ep = Endpoint(name, workdir, "--endpoint-name", endpoint, "--capture-flush-seconds", "0.3", *rollout, log=log)
    ep.wait_ready()
    return ep


def test_a_better_challenger_in_shadow_is_promoted(env, versions, local_workdir, tmp_path) -> None:
    endpoint = f"shadow-{uuid.uuid4().hex[:6]}"
    name, v1, v2 = champion_and_challenger(env, versions, "better")
    ep = start(name, endpoint, local_workdir, tmp_path / "serve.log", "--rollout", "shadow")
    try:
        assert ep.client.get("/version").json()["rollout"]["challenger"]["version"] == v2
        sent = send(ep, generate(300, seed=3, concept_drift=1.0))  # live traffic follows the new rule
        assert {version for _, version, _ in sent} == {v1}  # in shadow the champion answers everything
        frame = captured(env, endpoint, 300, "_shadow_prediction")
        assert len(frame) == 300 and set(frame["_model_version"]) == {v1} and set(frame["_shadow_version"]) == {v2}
        import mlflow

        with env.tracking():  # the shadow answers are the challenger's own predictions on the same rows
            challenger = mlflow.pyfunc.load_model(f"models:/{name}/{v2}")
        inputs = frame[[c for c in challenger.metadata.get_input_schema().input_names()]]
        np.testing.assert_allclose(frame["_shadow_prediction"].to_numpy(float),
                                   np.asarray(challenger.predict(inputs), float))

        labels = write_labels(sent, tmp_path / "labels.csv")
        result = monitor(MonitorSettings(endpoint=endpoint, model=name, labels=labels, rollout="shadow",
                                         retrain=False), env)
        r = result.rollout
        assert r is not None and r.decision == "promote" and r.applied, r
        assert r.challenger.metric > r.champion.metric and r.agreement is not None and 0 <= r.agreement < 1
        client = env.mlflow_client()
        assert client.get_model_version_by_alias(name, "champion").version == v2
        assert client.get_model_version_by_alias(name, "previous").version == v1
        assert "challenger" not in client.get_registered_model(name).aliases
        assert client.get_model_version(name, v2).tags["mlops.rollout.decision"] == "promoted"
        assert client.get_run(result.run_id).data.tags["mlops.rollout.decision"] == "promote"
        alert = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
        assert alert["rollout"]["decision"] == "promote" and alert["rollout"]["challenger_version"] == v2

        reloaded = ep.client.post("/reload").json()
        assert reloaded["version"] == v2 and reloaded["rollout"]["challenger"] is None
    finally:
        ep.stop()


def test_a_worse_challenger_in_canary_is_rolled_back_without_a_failed_request(env, versions, local_workdir,
                                                                             tmp_path) -> None:
    endpoint = f"canary-{uuid.uuid4().hex[:6]}"
    name, v1, v2 = champion_and_challenger(env, versions, "worse")
    ep = start(name, endpoint, local_workdir, tmp_path / "serve.log", "--rollout", "canary", "--canary-weight", "0.5")
    try:
        sent = send(ep, generate(400, seed=5))
        answered = {version for _, version, _ in sent}
        assert answered == {v1, v2}
        # Sticky routing: who answered follows from the request id's hash alone.
        assert all((version == v2) == (bucket(rid) < 0.5) for rid, version, _ in sent)
        frame = captured(env, endpoint, 400, "_model_version")
        by_request = frame.groupby("_request_id")["_model_version"].agg(set)
        assert all(by_request[rid] == {version} for rid, version, _ in sent)

        labels = write_labels(sent, tmp_path / "labels.csv")
        result = monitor(MonitorSettings(endpoint=endpoint, model=name, labels=labels, rollout="canary",
                                         retrain=False), env)
        r = result.rollout
        assert r is not None and r.decision == "roll_back" and r.applied, r
        assert r.champion.labelled_rows + r.challenger.labelled_rows == 400
        client = env.mlflow_client()
        assert client.get_model_version_by_alias(name, "champion").version == v1
        assert "challenger" not in client.get_registered_model(name).aliases
        assert client.get_model_version(name, v2).tags["mlops.rollout.decision"] == "rolled_back"
        assert json.loads((tmp_path / "alerts.jsonl").read_text())["rollout"]["decision"] == "roll_back"

        assert ep.client.post("/reload").json()["rollout"]["challenger"] is None
        after = send(ep, generate(100, seed=6))
        assert {version for _, version, _ in after} == {v1}  # back on the champion alone
    finally:
        ep.stop()
