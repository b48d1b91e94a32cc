"""The MLflow run a monitoring pass records into, and how it ends.

`monitoring_run(...)` opens a run in experiment `layout.monitoring_experiment(endpoint)` (tag
`mlops.monitor.state=running`). When the block completes, `summary.json` is logged and the run
ends FINISHED with `mlops.monitor.status`. On ANY exception inside the block (observing or
acting) it ends FAILED (KILLED when interrupted) with the reason in `mlops.monitor.error` and
no status tag, and the error is raised as a `MonitorError`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from workloads import layout
from workloads.monitoring.result import MonitorError, MonitorResult

log = logging.getLogger(__name__)
MAX_TAG = 5000


class MonitoringRun:
    """The open run; the block sets `result` once it has one."""

    def __init__(self, client: Any, run_id: str, experiment: str):
        self.client, self.run_id, self.experiment = client, run_id, experiment
        self.started = time.monotonic()
        self.result: MonitorResult | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _finish(self) -> None:
        if self.result is None:
            raise MonitorError("the monitoring pass ended without a result")
        self.result.seconds = round(time.monotonic() - self.started, 2)
        try:
            self.client.log_text(self.run_id, self.result.model_dump_json(indent=2), "summary.json")
        except Exception as exc:  # the actions happened; say the summary could not be stored, don't undo them
            log.error("could not store summary.json for run %s: %s", self.run_id, exc)
        self.client.set_tag(self.run_id, "mlops.monitor.state", "complete")
        self.client.set_tag(self.run_id, "mlops.monitor.status", self.result.status)
        self._terminate("FINISHED")

    def _terminate(self, status: str) -> None:
        """End the run without the link MlflowClient.set_terminated prints to stdout (it would corrupt
        `mlops monitor --json`); MLflow reads this variable on each call and has no other switch."""
        from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT as NO_LINK

        saved = os.environ.get(NO_LINK.name)
        NO_LINK.set("true")
        try:
            self.client.set_terminated(self.run_id, status)
        finally:
            if saved is None:
                NO_LINK.unset()
            else:
                NO_LINK.set(saved)

    def _fail(self, message: str, status: str) -> None:
        """Best effort: when the tracking server is what failed, the original error still gets out."""
        try:
            self.client.set_tag(self.run_id, "mlops.monitor.state", "failed")
            self.client.set_tag(self.run_id, "mlops.monitor.error", message[:MAX_TAG])
            self._terminate(status)
        except Exception as exc:
            log.error("could not mark monitoring run %s %s: %s", self.run_id, status, exc)


@contextmanager
def monitoring_run(client: Any, endpoint: str, now: datetime, *, s3_endpoint: str | None) -> Iterator[MonitoringRun]:
    """A monitoring run that ends FINISHED when the block completes, FAILED on any exception in it."""
    experiment = layout.monitoring_experiment(endpoint)
    created = client.create_run(experiment_id(client, experiment), run_name=f"monitor-{endpoint}-{now:%Y%m%dT%H%M%S}",
                                tags={"mlops.monitor.state": "running", "mlops.endpoint": endpoint})
    run = MonitoringRun(client, created.info.run_id, experiment)
    try:
        yield run
        run._finish()
    except Exception as exc:
        message = explain(exc, s3_endpoint)
        run._fail(message, "FAILED")
        if isinstance(exc, MonitorError):
            raise
        raise MonitorError(message) from exc
    except BaseException as exc:  # interrupted (Ctrl-C, SIGTERM turned into SystemExit): not left RUNNING
        run._fail(f"interrupted: {type(exc).__name__}", "KILLED")
        raise


def experiment_id(client: Any, name: str) -> str:
    """The experiment's id, creating it if needed; two monitors may race to create it."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return str(client.get_experiment_by_name(name).experiment_id)


def explain(exc: Exception, s3_endpoint: str | None) -> str:
    """One line for the run's error tag and the CLI."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, MonitorError):
        return str(exc)
    if isinstance(exc, BotoCoreError | ClientError):
        return f"object storage failed ({s3_endpoint or 'AWS S3'}): {exc}"
    return f"{type(exc).__name__}: {exc}"
