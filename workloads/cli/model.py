"""`mlops model report NAME VERSION`: the audit report of one registered version (workloads/lifecycle/)."""

from __future__ import annotations

from pathlib import Path

import typer

from workloads.cli.app import AS_JSON, STACK, WORKDIR, app, console
from workloads.cli.options import App
from workloads.settings import ReportSettings

model_app = App(help="Registered model versions: the audit report.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.settings_command(ReportSettings, "report")
def report(
    settings: ReportSettings,
    html: Path | None = typer.Option(None, "--html", help="Also write the HTML report to this file."),
    as_json: bool = AS_JSON,
    log: bool = typer.Option(True, "--log/--no-log", help="Log report.json and report.html to the version's run."),
    stack: str | None = STACK,
    workdir: str | None = WORKDIR,
) -> None:
    """Data, code, spec, search, metrics, every gate decision, promotions, monitoring and serving of one version."""
    from workloads.environment import environment
    from workloads.lifecycle import render
    from workloads.lifecycle.report import build, summary_table
    from workloads.lifecycle.report import log as log_report

    env = environment(stack, workdir)
    built = build(settings, env)
    page = render.html(built)
    if log:
        log_report(env, built, page)
    if html is not None:
        html.write_text(page)
    if as_json:
        typer.echo(built.model_dump_json(indent=2))
    else:
        console.print(summary_table(built))
