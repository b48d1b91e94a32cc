"""`mlops env recreate STACK`: back up, tear down and recreate an environment (workloads/devstack/recreate.py).

The local stack is recreated by this command; a deployed stack by the steps in README "Backups and
recreation" (RDS: its final snapshot and `tracking.database.restoreFromSnapshot`; cloud: none: the
backup CronJob and the `tracking-restore` Job template).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from workloads.cli.app import AS_JSON, WORKDIR, console
from workloads.cli.env import env_app
from workloads.cli.options import err_console
from workloads.errors import UsageError


@env_app.command("recreate")
def env_recreate(
    stack: str = typer.Argument(..., help="`local`: the local stack in --workdir (deployed stacks: README)."),
    workdir: str | None = WORKDIR,
    into: str | None = typer.Option(None, "--into", help="Restore into this Postgres database (created; it must "
                                    "not exist) [default: the same database, dropped and created again]."),
    passphrase_file: Path | None = typer.Option(None, "--passphrase-file", help="The backup passphrase's file "
                                                "[default: <workdir>/backup.key, created on first use]."),
    yes: bool = typer.Option(False, "--yes", help="Confirm: the stack goes down and its database is dropped."),
    as_json: bool = AS_JSON,
) -> None:
    """Back up the tracking database, tear the stack down, recreate it from the backup and check the registry."""
    from workloads.devstack.recreate import LocalRecreation, passphrase
    from workloads.devstack.stack import LocalStack

    if stack != "local":
        raise UsageError(f"stack {stack!r}: this command recreates the local stack (`local`); recreate a deployed "
                         "stack with the steps in README \"Backups and recreation\"")
    if not yes:
        raise UsageError("recreation stops the local stack and drops its database after backing it up; "
                         "add --yes to go ahead")
    local = LocalStack.at(workdir)
    with err_console.status("recreating the local stack") as status_line:
        result = LocalRecreation(local, passphrase(local.workdir, passphrase_file), into,
                                 on_status=status_line.update).run()
    if as_json:
        typer.echo(json.dumps(result.__dict__, indent=2))
        return
    table = Table(title=f"local stack recreated from s3://…/{result.backup_key}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for step, seconds in result.seconds.items():
        table.add_row(step, f"{seconds:.1f}")
    console.print(table)
    models = result.registry["models"]
    console.print(f"[green]{len(models)} registered model(s), {len(result.registry['experiments'])} experiment(s) "
                  f"as before[/green]; database {result.target}")
