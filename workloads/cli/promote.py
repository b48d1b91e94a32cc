"""`mlops promote MODEL`: copy a version to another environment and gate it there (workloads/lifecycle/)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from workloads.cli.app import AS_JSON, app, console
from workloads.errors import UsageError
from workloads.settings import PromoteSettings

if TYPE_CHECKING:
    from workloads.environment import Environment

FROM = typer.Option(None, "--from", help="Source Pulumi stack (default: the local stack, else MLOPS_* variables).")
FROM_WORKDIR = typer.Option(None, "--from-workdir", help="Source local stack workdir (holds outputs.json).")
FROM_BUNDLE = typer.Option(None, "--from-bundle", help="Import a bundle written by --to-bundle instead.")
TO = typer.Option(None, "--to", help="Target Pulumi stack (default: the local stack, else MLOPS_* variables).")
TO_WORKDIR = typer.Option(None, "--to-workdir", help="Target local stack workdir (holds outputs.json).")
TO_BUNDLE = typer.Option(None, "--to-bundle", help="Only export the version into this new directory.")


@app.settings_command(PromoteSettings, "promote")
def promote(
    settings: PromoteSettings,
    source_stack: str | None = FROM, source_workdir: str | None = FROM_WORKDIR, from_bundle: Path | None = FROM_BUNDLE,
    target_stack: str | None = TO, target_workdir: str | None = TO_WORKDIR, to_bundle: Path | None = TO_BUNDLE,
    as_json: bool = AS_JSON,
) -> None:
    """Copy a registered version (artifacts, signature, input example, metrics, lineage, dataset) to another
    environment, gate it there on that environment's data, register it last with the gate's alias.

    Promoting the same source version again creates nothing. With --to-bundle / --from-bundle the two
    halves run in separate jobs, each reaching only its own environment. Exit codes: 2 bad options or
    no such version; 1 the promotion failed (nothing registered in the target).
    """
    from workloads.lifecycle.promote import promote as run

    result = run(settings, _side(source_stack, source_workdir, from_bundle, "from"),
                 _side(target_stack, target_workdir, to_bundle, "to"))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    elif result.bundle:
        console.print(f"exported {result.promoted_from} to {result.bundle}")
    else:
        state = "promoted" if result.created else "already promoted, nothing created:"
        console.print(f"{state} {result.promoted_from} -> {result.environment} v{result.version} as "
                      f"{result.decision} ({result.reason})")


def _side(stack: str | None, workdir: str | None, bundle: Path | None, name: str) -> Environment | Path:
    """One side of the promotion: a bundle directory, or an environment resolved like `--stack`/`--workdir`."""
    from workloads.environment import environment

    given = [o for o, v in ((f"--{name}", stack), (f"--{name}-workdir", workdir), (f"--{name}-bundle", bundle))
             if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)}: give one")
    return bundle if bundle is not None else environment(stack, workdir)
