"""Shadow and canary in process (no sockets, no registry): who answers, what capture gets, and that a
failing challenger never fails a request. End to end with the monitor: tests/monitoring/test_rollout.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from tests.serving.helpers import small_frame
from tests.serving.test_app import serving_app
from workloads.capture.table import Record, records_to_table
from workloads.serving.app import ServingApp
from workloads.serving.model import LoadedModel
from workloads.serving.rollout import bucket

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _broken(*_: Any, **__: Any) -> Any:
    raise RuntimeError("challenger is broken")


def challenger_of(champion: LoadedModel, *, broken: bool = False) -> LoadedModel:
    """Version 2 of the same model: answering 1 - p (so its answers differ visibly), or raising."""
    def flipped(data: Any, params: Any = None) -> Any:
        return 1 - np.asarray(champion.predict_validated(data, None))

    return dataclasses.replace(champion, alias="challenger", version="2", _predict_fn=_broken if broken else flipped,
                               _predict_takes_params=True)


class Recorder:
    """Stands in for the capture writer: what the batcher records, with its shadow part."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def record_batch(self, ids: list[str], sizes: list[int], name: str, version: str, frame: Any, output: Any,
                     shadow: tuple[str, Any] | None = None) -> bool:
        self.calls.append({"ids": ids, "version": version, "frame": frame, "output": output, "shadow": shadow})
        return True


async def _requests(app: ServingApp, champion: LoadedModel, challenger: LoadedModel, n: int
                    ) -> tuple[list[httpx.Response], dict]:
    app.holder.current, app.rollout.holder.current = champion, challenger  # type: ignore[union-attr]
    app.batcher.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            body = json.dumps({"dataframe_split": small_frame(3, 5).to_dict(orient="split", index=False)})
            csv = small_frame(2, 6).to_csv(index=False)  # the MLflow path too
            answers = await asyncio.gather(*(
                client.post("/invocations", content=csv if i % 4 == 0 else body,
                            headers={"Content-Type": "text/csv" if i % 4 == 0 else "application/json"})
                for i in range(n)))
            return list(answers), (await client.get("/version")).json()
    finally:
        await app.batcher.stop()  # waits for the predictor thread: every shadow has run


def test_bucket_is_stable_and_uniform() -> None:
    ids = [f"id-{i}" for i in range(20_000)]
    assert [bucket(i) for i in ids[:50]] == [bucket(i) for i in ids[:50]]
    share = np.mean([bucket(i) < 0.1 for i in ids])
    assert 0.09 < share < 0.11, share


@pytest.mark.parametrize("broken", [False, True])
def test_shadow_answers_with_the_champion_and_captures_both(small_model: LoadedModel, broken: bool) -> None:
    app, recorder = serving_app(rollout="shadow"), Recorder()
    app.batcher.capture = app.batcher.shadow.capture = recorder  # type: ignore[union-attr]
    answers, version = asyncio.run(_requests(app, small_model, challenger_of(small_model, broken=broken), 24))
    assert [a.status_code for a in answers] == [200] * 24  # a failing challenger fails nothing
    assert {a.headers["x-model-version"] for a in answers} == {"1"}
    assert version["rollout"] == {"mode": "shadow", "weight": None,
                                  "challenger": {"alias": "challenger", "version": "2", "run_id": None}}
    recorded = {i for call in recorder.calls for i in call["ids"]}
    assert recorded == {a.headers["x-request-id"] for a in answers}  # every request captured once
    for call in recorder.calls:
        assert call["version"] == "1" and call["shadow"][0] == "2"
        if broken:
            assert call["shadow"][1] is None
        else:  # the challenger's own answers on the very rows the champion scored
            np.testing.assert_allclose(call["shadow"][1], 1 - np.asarray(call["output"]))
    events = app.metrics.registry.get_sample_value
    scored = events("mlops_serving_rollout_events_total", {"event": "shadow_failed" if broken else "shadow"})
    assert scored is not None and 1 <= scored <= len(recorder.calls)  # the challenger scores waiting frames together


def test_canary_splits_by_request_id_and_falls_back_when_the_challenger_fails(small_model: LoadedModel) -> None:
    app = serving_app(rollout="canary", canary_weight=0.5)
    answers, _ = asyncio.run(_requests(app, small_model, challenger_of(small_model), 40))
    assert [a.status_code for a in answers] == [200] * 40
    for a in answers:
        assert a.headers["x-model-version"] == ("2" if bucket(a.headers["x-request-id"]) < 0.5 else "1")
    assert {a.headers["x-model-version"] for a in answers} == {"1", "2"}

    app = serving_app(rollout="canary", canary_weight=1.0)
    answers, _ = asyncio.run(_requests(app, small_model, challenger_of(small_model, broken=True), 12))
    assert [a.status_code for a in answers] == [200] * 12  # every canary failure answered by the champion
    assert {a.headers["x-model-version"] for a in answers} == {"1"}
    fallbacks = app.metrics.registry.get_sample_value("mlops_serving_rollout_events_total",
                                                      {"event": "canary_fallback"})
    assert fallbacks == 12


def test_capture_keeps_one_schema_with_and_without_a_shadow() -> None:
    from datetime import UTC, datetime

    frame = small_frame(3, 1)
    plain = Record(["a"], [3], datetime.now(UTC), "m", "1", frame, np.array([0.1, 0.2, 0.3]))
    shadowed = dataclasses.replace(plain, shadow_version="2", shadow_predictions=np.array([0.9, 0.8, 0.7]))
    failed = dataclasses.replace(plain, shadow_version="2", shadow_predictions=None)
    tables = [records_to_table([r]) for r in (plain, shadowed, failed)]
    assert len({str(t.schema) for t in tables}) == 1
    assert tables[0].schema.field("_shadow_prediction").type == pa.float64()
    assert tables[1]["_shadow_version"].to_pylist() == ["2"] * 3
    assert tables[1]["_shadow_prediction"].to_pylist() == [0.9, 0.8, 0.7]
    assert tables[2]["_shadow_version"].to_pylist() == [None] * 3  # the challenger failed: nothing to compare
    mixed = records_to_table([plain, shadowed])
    assert mixed["_shadow_prediction"].to_pylist() == [None] * 3 + [0.9, 0.8, 0.7]


@pytest.mark.parametrize("rollout", [{"mode": "shadow"}, {"mode": "canary", "weight": 0.25}])
def test_rendered_rollout_arguments_parse_through_the_cli(rollout: dict) -> None:
    """The stack key renders into `mlops serve` and `mlops monitor` arguments the real CLI accepts."""
    from typer.testing import CliRunner

    from components.config_sections import ServingEndpoint
    from components.jobs import labels_source
    from components.serving import serve_settings
    from workloads.cli import app
    from workloads.settings import MonitorSettings, to_args

    endpoint = ServingEndpoint.model_validate({"name": "churn", "model": "churn", "rollout": rollout})
    monitor_args = to_args(MonitorSettings(endpoint="churn", model="churn", labels=labels_source(endpoint, "c"),
                                           rollout=endpoint.rollout.mode))
    for command, args in (("serve", to_args(serve_settings(endpoint))), ("monitor", monitor_args)):
        result = CliRunner().invoke(app, ["--check", command, *args])
        assert result.exit_code == 0, result.output
        settings = json.loads(result.stdout.strip().splitlines()[-1])["settings"]
        assert settings["rollout"] == rollout["mode"]
        if command == "serve":
            assert settings["canary_weight"] == rollout.get("weight", 0.1)
