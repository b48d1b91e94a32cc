"""`mlops local up|down|status`: the local stack (workloads/devstack/stack.py)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from workloads.cli.app import WORKDIR, app, console
from workloads.cli.options import App, err_console

local_app = App(help="The local stack: moto S3 and an MLflow tracking server on 127.0.0.1.", no_args_is_help=True)
app.add_typer(local_app, name="local")


@local_app.command("up")
def local_up(
    workdir: str | None = WORKDIR,
    backend_store_uri: str | None = typer.Option(
        None, "--backend-store-uri",
        help="Tracking store, e.g. postgresql://user@host:5432/db [default: sqlite in the workdir, or the last one used]."),
    s3_port: int | None = typer.Option(None, "--s3-port", help="Port for the S3 server [default: free port]."),
    tracking_port: int | None = typer.Option(None, "--tracking-port", help="Port for mlflow [default: free port]."),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for both servers to be healthy."),
) -> None:
    """Start the local stack (or report that it is already running) and write outputs.json."""
    from workloads.devstack.stack import LocalStack

    with err_console.status("starting the local stack") as status_line:
        stack = LocalStack.at(workdir, on_status=status_line.update, backend_store_uri=backend_store_uri,
                              s3_port=s3_port, tracking_port=tracking_port)
        outputs = stack.up(timeout=timeout)
    state = "already running" if stack.was_running else "up"
    console.print(f"[green]local stack {state}[/green] in {stack.workdir}")
    console.print(f"  tracking  {outputs.tracking_uri}\n  s3        {outputs.s3_endpoint}\n"
                  f"  outputs   {stack.outputs_file}")


@local_app.command("down")
def local_down(workdir: str | None = WORKDIR) -> None:
    """Stop the local stack's processes (only ours); data stays in the workdir."""
    from workloads.devstack.stack import LocalStack

    with err_console.status("stopping the local stack") as status_line:
        stack = LocalStack.at(workdir, on_status=status_line.update)
        stack.down()
    for warning in stack.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"local stack down; data kept in {stack.workdir}")


@local_app.command("status")
def local_status(
    workdir: str | None = WORKDIR,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show each component's pid, URL and health. Exit code 0 only when everything is healthy."""
    from workloads.devstack.stack import LocalStack

    state = LocalStack.at(workdir).status()
    if as_json:
        typer.echo(json.dumps(state, indent=2))
    else:
        table = Table(title=f"local stack in {state['workdir']}")
        for column in ("component", "pid", "URL", "healthy"):
            table.add_column(column)
        for name, c in state["components"].items():
            health = "[green]yes[/green]" if c["healthy"] else ("[red]no[/red]" if c["running"] else "stopped")
            table.add_row(name, str(c["pid"] or "-"), c["url"] or "-", health)
        console.print(table)
    if not state["healthy"]:
        raise typer.Exit(1)
