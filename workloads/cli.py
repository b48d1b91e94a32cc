"""The `mlops` command line.

Each command imports its implementation lazily, so `mlops plan` does not pay for
importing mlflow and scikit-learn, and `mlops train` does not pay for pulumi_aws.
Commands are grouped by concept; each group's options live next to it here.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console

app = typer.Typer(
    name="mlops",
    help="MLOps platform: plan environments, run the local stack, train, serve and monitor models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def main() -> None:
    """MLOps platform: plan environments, run the local stack, train, serve and monitor models."""


# --- infrastructure -------------------------------------------------------------------------


@app.command()
def plan(
    stack: str = typer.Argument(..., help="Stack name (dev, staging, prod, ci, local) or a path to a stack file."),
    as_json: bool = typer.Option(False, "--json", help="Print resources as JSON instead of a tree."),
) -> None:
    """Render an environment offline (no cloud, no credentials) and print its resource tree."""
    from components.config import ConfigError
    from components.render import render_stack
    from workloads.plan_view import print_plan

    try:
        result = render_stack(stack)
    except ConfigError as exc:
        err_console.print(f"[red]invalid configuration[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print_plan(result, console)


# --- local stack ----------------------------------------------------------------------------
# (workloads/local.py)

# --- training -------------------------------------------------------------------------------
# (workloads/train.py)

# --- serving --------------------------------------------------------------------------------
# (workloads/serve.py)

# --- monitoring -----------------------------------------------------------------------------
# (workloads/monitor.py)

# --- quickstart -----------------------------------------------------------------------------

# --- short-lived environments ---------------------------------------------------------------
# (workloads/env.py)


if __name__ == "__main__":  # pragma: no cover
    app()
