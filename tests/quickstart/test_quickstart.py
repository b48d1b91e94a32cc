"""The quickstart end to end at small sizes: the README's main job, asserted through summary.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from workloads.devstack.quickstart import Sizes, run
from workloads.devstack.stack import LocalStack

pytestmark = pytest.mark.servers


def test_quickstart_runs_the_whole_loop(tmp_path: Path) -> None:
    workdir = tmp_path / "quickstart"
    summary = run(workdir, Sizes(train_rows=1500, window_rows=300, rows_per_request=15, seed=3), down=True,
                  console=Console(file=open(os.devnull, "w")))
    # `--down`, as in the README's main command: nothing of ours is left running
    assert LocalStack(workdir).status()["running"] is False
    try:
        written = json.loads((workdir / "summary.json").read_text())
        assert written == json.loads(summary.model_dump_json())

        # champion v1 from the first training run
        assert written["versions"]["first"] == {**written["versions"]["first"], "version": "1", "decision": "champion"}
        # drift in the second window only
        assert written["windows"]["normal"]["status"] == "ok"
        assert written["windows"]["normal"]["drift_detected"] is False
        assert not (written["windows"]["normal"]["retraining"] or {}).get("triggered")
        drifted = written["windows"]["drifted"]
        assert drifted["drift_detected"] is True and drifted["drifted_features"]
        assert drifted["alert"]["channels"], "an alert was delivered somewhere"
        # retraining ran and the gate recorded its decision on the new version
        retrained = written["versions"]["retrained"]
        assert retrained["triggered"] is True and retrained["version"] == "2"
        assert retrained["decision"] in ("champion", "challenger")
        outputs = LocalStack(workdir).up()  # everything is still there after down/up
        client = MlflowClient(outputs.tracking_uri)
        assert client.get_model_version("churn", "2").tags["mlops.decision"] == retrained["decision"]
        # the endpoint served the alias's current version after the reload
        champion = client.get_model_version_by_alias("churn", "champion").version
        assert written["served_version"] == written["champion_version"] == champion
        assert champion == ("2" if retrained["decision"] == "champion" else "1")
    finally:
        LocalStack(workdir).down()
