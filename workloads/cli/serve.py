"""`mlops serve`: one endpoint with MLflow's scoring protocol (workloads/serving/)."""

from __future__ import annotations

from workloads.cli.app import STACK, WORKDIR, app
from workloads.settings import ServeSettings


@app.settings_command(ServeSettings)
def serve(settings: ServeSettings, stack: str | None = STACK, workdir: str | None = WORKDIR) -> None:
    """Serve models:/MODEL@ALIAS with MLflow's scoring protocol, micro-batching and inference capture."""
    from workloads.environment import environment
    from workloads.serving.server import serve as run

    run(settings, environment(stack, workdir))
