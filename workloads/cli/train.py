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
    from workloads.environment import resolve
    from workloads.training.job import ShardResult, run_settings, summary_table

    outputs = resolve(stack, workdir)
    result = run_settings(settings, outputs, progress=not as_json)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    elif isinstance(result, ShardResult):
        best = "no candidates" if result.best is None else \
            f"best {result.best.family} {result.best.params} cv {result.best.cv_score:.4f}"
        console.print(f"shard {result.shard}/{result.shards} of group {result.group}: "
                      f"{result.n_candidates} candidates, {best} (run {result.run_id})")
    else:
        console.print(summary_table(result))
