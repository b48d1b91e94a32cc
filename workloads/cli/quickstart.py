"""`mlops quickstart`: the whole loop on 127.0.0.1 (workloads/devstack/quickstart.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from workloads.cli.app import app, console


@app.command()
def quickstart(
    workdir: Path = typer.Option(Path(".mlops/quickstart"), "--workdir",
                                 help="The demo's own local stack (wiped and recreated at start)."),
    down: bool = typer.Option(False, "--down", help="Stop the local stack at the end."),
    train_rows: int = typer.Option(4000, "--train-rows", min=200, help="Rows of training data."),
    window_rows: int = typer.Option(600, "--window-rows", min=50, help="Rows of traffic per monitoring window."),
    seed: int = typer.Option(7, "--seed", help="Seed for every generated table."),
) -> None:
    """The whole loop on 127.0.0.1: stack, train, serve, capture, monitor, drift, retrain, reload."""
    from workloads.devstack.quickstart import Sizes, run

    run(workdir, Sizes(train_rows=train_rows, window_rows=window_rows, seed=seed), down=down, console=console)
