"""`mlops monitor`: drift and decay of an endpoint's traffic; alert and retrain (workloads/monitoring/)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import typer

from workloads.cli.app import AS_JSON, STACK, WORKDIR, app, console
from workloads.settings import MonitorSettings


@app.settings_command(MonitorSettings, "monitor")
def monitor(
    settings: MonitorSettings,
    output: str | None = typer.Option(None, "--output", help="Also write the JSON summary to this file."),
    as_json: bool = AS_JSON,
    stack: str | None = STACK,
    workdir: str | None = WORKDIR,
) -> None:
    """Check an endpoint's captured traffic for drift and decay; alert and retrain above the thresholds.

    Exit codes: 0 ok, drift, performance_decay or insufficient_data (handled); 3 data_integrity_failure;
    1 the monitor could not finish (storage or registry down; nothing alerted or retrained) or retraining failed;
    2 bad options or no environment.
    """
    from workloads.environment import environment
    from workloads.monitoring.monitor import monitor as run_monitor
    from workloads.monitoring.report import summary_table

    env = environment(stack, workdir)
    with nullcontext() if as_json else console.status(f"monitoring {settings.endpoint}"):
        result = run_monitor(settings, env)
    summary = result.model_dump_json(indent=2)
    if output:
        Path(output).write_text(summary)
    if as_json:
        typer.echo(summary)
    else:
        console.print(summary_table(result))
    raise typer.Exit(result.exit_code)
