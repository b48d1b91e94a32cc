"""`mlops serve`: uvicorn with one worker process per `--workers`, each running a `ServingApp`.

Workers are separate processes started by uvicorn: they get the settings and the stack
outputs as JSON in one environment variable and build their own `Environment` from it (process
plumbing only; nothing reads the outputs from anywhere else). The address is the settings'
`--host` (`0.0.0.0` in a pod, so the Service and the probes reach it).

Reloading the alias: `POST /reload` on any worker (with the reload token, auth.py), or SIGHUP.
With one worker SIGHUP reaches the app itself, which re-resolves the alias in place; with
several, uvicorn's supervisor gets it and replaces the workers one by one, each loading what
the alias points at on startup.

Each worker's connections are bounded by connection.py's protocol; /metrics merges all workers
(prometheus.py's multiprocess directory, prepared here before any worker starts).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from workloads.environment import Environment, StackOutputs
from workloads.serving import prometheus
from workloads.serving.app import ServingApp
from workloads.serving.auth import Credentials
from workloads.serving.connection import uvicorn_options
from workloads.serving.loading import pickle_switch
from workloads.settings import ServeSettings

WORKER_ENV = "MLOPS_SERVE_WORKER"  # how the supervisor hands settings and outputs to uvicorn workers
APP_FACTORY = f"{__name__}:worker_app"


class WorkerConfig(BaseModel):
    """What every worker process is started with."""

    model_config = ConfigDict(frozen=True)

    settings: ServeSettings
    outputs: StackOutputs
    workdir: Path

    @classmethod
    def of(cls, settings: ServeSettings, env: Environment) -> WorkerConfig:
        return cls(settings=settings, outputs=env.outputs, workdir=env.workdir)

    def environment(self) -> Environment:
        return Environment(self.outputs, self.workdir)


def worker_app() -> ServingApp:
    """The ASGI app of one worker (uvicorn calls this factory in every worker process)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    config = WorkerConfig.model_validate_json(os.environ[WORKER_ENV])
    os.environ[_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name] = "true"  # what mlflow's scoring server sets
    pickle_switch(config.settings.pickle_allowed)  # MLflow's own guard too, for any loader it runs
    return ServingApp(config.settings, config.environment(), Credentials.from_environ())


def serve(settings: ServeSettings, env: Environment) -> None:
    """Serve until SIGINT/SIGTERM: one uvicorn worker process per `settings.workers`."""
    import uvicorn

    os.environ[WORKER_ENV] = WorkerConfig.of(settings, env).model_dump_json()
    prometheus.prepare_multiprocess()  # before any worker or metric exists
    uvicorn.run(
        APP_FACTORY, factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        access_log=False, log_level="info", timeout_graceful_shutdown=30, **uvicorn_options(settings),
        **_fast_loop(),
    )


def _fast_loop() -> dict[str, Any]:
    """uvloop when installed (the workload image has it)."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401

        return {"loop": "uvloop"}
    return {}
