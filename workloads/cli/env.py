"""`mlops env create|smoke|destroy|reap`: short-lived ci environments (workloads/ci/environments.py)."""

from __future__ import annotations

import json

import typer

from workloads.cli.app import app, console
from workloads.cli.options import App, err_console

env_app = App(help="Short-lived ci environments (needs the Pulumi CLI): create, smoke, destroy, reap.",
              no_args_is_help=True)
app.add_typer(env_app, name="env")


@env_app.command("create")
def env_create(
    name: str = typer.Argument(..., help="Environment (and stack) name: ci-<id>."),
    ttl: str = typer.Option("3h", "--ttl", help="Time to live (90m, 6h, 2d): after it, `mlops env reap` destroys it."),
) -> None:
    """Create stack NAME from stacks/Pulumi.ci.yaml and `pulumi up` it (destroyed again if up fails)."""
    from workloads.ci.backends import production
    from workloads.ci.environments import check_name, parse_duration

    check_name(name)
    lifetime = parse_duration(ttl)  # bad input is refused before anything needs the Pulumi CLI
    outputs = production(with_cluster=False).create(name, lifetime)
    typer.echo(json.dumps(outputs, indent=2, default=str))


@env_app.command("smoke")
def env_smoke(name: str = typer.Argument(..., help="Environment name: ci-<id>.")) -> None:
    """Train a small model, get a prediction from the endpoint, run the monitor, in NAME."""
    from workloads.ci.backends import production

    production().smoke(name)
    console.print(f"[green]{name}: smoke test passed[/green]")


@env_app.command("destroy")
def env_destroy(name: str = typer.Argument(..., help="Environment name: ci-<id>.")) -> None:
    """Destroy NAME and remove its stack, then fail (exit 1) listing anything still tagged or in its namespace."""
    from workloads.ci.backends import production

    leaks = production().destroy(name)
    if leaks:
        err_console.print(f"[red]{name} leaked {len(leaks)} resource(s):[/red]")
        for leak in leaks:
            err_console.print(f"  {leak}", markup=False)
        raise typer.Exit(1)
    console.print(f"[green]{name}: destroyed, nothing leaked[/green]")


@env_app.command("reap")
def env_reap(
    older_than: str = typer.Option("6h", "--older-than", help="Also destroy ci environments created before this."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be destroyed."),
) -> None:
    """Destroy ci environments past their TTL tag or older than --older-than (never dev, staging, prod)."""
    from workloads.ci.backends import production
    from workloads.ci.environments import parse_duration

    age = parse_duration(older_than)  # before anything needs the Pulumi CLI
    results = production().reap(age, dry_run)
    failed = {k: v for k, v in results.items() if v}
    for name in results:
        console.print(f"{'would destroy' if dry_run else 'destroyed'} {name}"
                      + (f" [red]{failed[name]}[/red]" if name in failed else ""))
    if failed:
        raise typer.Exit(1)
