"""`mlops train SPEC`: train, gate and register a model (workloads/training/)."""

from __future__ import annotations

import typer

from workloads.cli.app import AS_JSON, STACK, WORKDIR, app, console
from workloads.settings import TrainSettings


@app.settings_command(TrainSettings)
def train(settings: TrainSettings, stack: str | None = STACK, workdir: str | None = WORKDIR,
          as_json: bool = AS_JSON) -> None:
    """Train, register and gate a model from a spec: validated, versioned data in; champion or challenger out.

    On a cluster the search can fan out: `--shard I --shards N` in N pods, then `--select --shards N`.
    Exit codes: 2 bad spec, options or environment; 3 data validation failed; 1 training failed
    (e.g. shards missing, a server went away); nothing is registered in any of these cases.
    """
    from workloads.environment import environment
    from workloads.training.job import run
    from workloads.training.report import ShardResult, shard_summary, summary_table

    result = run(settings, environment(stack, workdir), progress=not as_json)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console.print(shard_summary(result) if isinstance(result, ShardResult) else summary_table(result))
