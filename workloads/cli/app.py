"""The `mlops` application object and its global options; commands register in their own modules."""

from __future__ import annotations

import typer
from rich.console import Console

from workloads.cli.options import CHECK_ONLY, App

app = App(
    name="mlops",
    help="MLOps platform: plan environments, run the local stack, train, serve and monitor models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()

# Options several commands share: where the environment comes from, and machine-readable output.
STACK = typer.Option(None, "--stack", help="Pulumi stack whose outputs to use (else the local stack).")
WORKDIR = typer.Option(None, "--workdir", envvar="MLOPS_WORKDIR",
                       help="Local stack workdir (holds outputs.json) [default: .mlops/local].")
AS_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


@app.callback()
def main(
    check: bool = typer.Option(False, "--check", help="Only parse and validate the command's settings, print "
                               "them as JSON and exit (what a rendered container would run with)."),
) -> None:
    """MLOps platform: plan environments, run the local stack, train, serve and monitor models."""
    CHECK_ONLY.set(check)
