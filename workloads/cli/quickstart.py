"""`mlops quickstart`: the whole loop on 127.0.0.1 (workloads/devstack/quickstart.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from workloads.cli.app import app, console
from workloads.devstack.quickstart import DEFAULT_WORKDIR, Sizes


@app.settings_command(Sizes, "quickstart")
def quickstart(
    sizes: Sizes,
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir",
                                 help="The demo's own local stack (wiped and recreated at start)."),
    down: bool = typer.Option(False, "--down", help="Stop the local stack at the end."),
) -> None:
    """The whole loop on 127.0.0.1: stack, train, serve, capture, monitor, drift, retrain, reload."""
    from workloads.devstack.quickstart import run

    run(workdir, sizes, down=down, console=console)
