"""How a monitoring run ends, with a recording stand-in for MlflowClient (no servers), and the CLI's bounds."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from workloads.monitoring.result import MonitorError, MonitorResult
from workloads.monitoring.run import experiment_id, monitoring_run

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
NO_LINK = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


class Client:
    """Records what a monitoring run does to its MLflow run; `broken` makes every write fail."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.tags: dict[str, str] = {}
        self.status: str | None = None
        self.texts: dict[str, str] = {}

    def get_experiment_by_name(self, name):
        return SimpleNamespace(experiment_id="1")

    def create_run(self, experiment_id, run_name, tags):
        self.tags |= tags
        return SimpleNamespace(info=SimpleNamespace(run_id="r1"))

    def set_tag(self, run_id, key, value):
        if self.broken:
            raise ConnectionError("tracking server down")
        self.tags[key] = value

    def set_terminated(self, run_id, status):
        if self.broken:
            raise ConnectionError("tracking server down")
        self.status = status
        self.links_suppressed = os.environ.get(NO_LINK) == "true"  # else MLflow prints a link to stdout

    def log_text(self, run_id, text, name):
        self.texts[name] = text


def _result() -> MonitorResult:
    return MonitorResult(status="ok", reasons=[], endpoint="e", model_name="m", model_version="1", alias="champion",
                         window={"rows": 0}, run_id="r1", experiment="monitoring/e")


def test_a_completed_block_ends_finished_with_its_status_and_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_LINK, raising=False)
    client = Client()
    with monitoring_run(client, "e", NOW, s3_endpoint=None) as run:
        run.result = _result()
    assert client.status == "FINISHED" and client.tags["mlops.monitor.status"] == "ok"
    assert client.tags["mlops.monitor.state"] == "complete" and "summary.json" in client.texts
    assert client.links_suppressed and NO_LINK not in os.environ  # `--json` stays JSON; the process is restored


def test_any_exception_in_the_block_ends_the_run_failed() -> None:
    client = Client()
    with pytest.raises(MonitorError, match="OSError: read-only file system") as caught:
        with monitoring_run(client, "e", NOW, s3_endpoint=None) as run:
            run.result = _result()  # observed; then acting fails
            raise OSError("read-only file system")
    assert client.status == "FAILED" and client.tags["mlops.monitor.error"] == str(caught.value)
    assert "mlops.monitor.status" not in client.tags


def test_an_interrupted_run_is_killed_not_left_running() -> None:
    client = Client()
    with pytest.raises(KeyboardInterrupt):
        with monitoring_run(client, "e", NOW, s3_endpoint=None):
            raise KeyboardInterrupt
    assert client.status == "KILLED" and client.tags["mlops.monitor.state"] == "failed"


def test_the_original_error_gets_out_when_the_tracking_server_is_what_failed() -> None:
    client = Client(broken=True)
    with pytest.raises(MonitorError, match="ValueError: no champion"):
        with monitoring_run(client, "e", NOW, s3_endpoint=None):
            raise ValueError("no champion")


def test_experiment_created_by_a_concurrent_monitor_is_reused() -> None:
    """Two monitors can both see no experiment; the loser of the create race uses the winner's."""
    from mlflow.exceptions import RestException

    class Racing:
        def __init__(self) -> None:
            self.created = False

        def get_experiment_by_name(self, name):
            return SimpleNamespace(experiment_id="7") if self.created else None

        def create_experiment(self, name):
            self.created = True  # the other monitor won
            raise RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"{name} exists"})

    assert experiment_id(Racing(), "monitoring/raced") == "7"


def test_cli_refuses_a_zero_drift_share_in_one_line() -> None:
    """`--drift-share 0` used to pass the CLI's bound and crash in a second model with other bounds."""
    from workloads.cli import app

    result = CliRunner().invoke(app, ["--check", "monitor", "--endpoint", "e", "--model", "m", "--drift-share", "0"])
    assert result.exit_code == 2, result.output
    assert "--drift-share 0.0: Input should be greater than 0" in result.output
    assert "Traceback" not in result.output
