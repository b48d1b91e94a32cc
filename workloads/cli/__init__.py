"""The `mlops` command line.

Each command imports its implementation lazily, so `mlops plan` does not pay for
importing mlflow and scikit-learn, and `mlops train` does not pay for pulumi_aws.
Commands are grouped by concept; each group's options live next to it here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    from workloads.cli.plan_view import print_plan

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

local_app = typer.Typer(help="The local stack: moto S3 and an MLflow tracking server on 127.0.0.1.",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")
_WORKDIR_OPTION = typer.Option(None, "--workdir", envvar="MLOPS_WORKDIR",
                               help="Where the stack keeps its data, logs and outputs.json [default: .mlops/local].")


@local_app.command("up")
def local_up(
    workdir: str | None = _WORKDIR_OPTION,
    backend_store_uri: str | None = typer.Option(
        None, "--backend-store-uri",
        help="Tracking store, e.g. postgresql://user@host:5432/db [default: sqlite in the workdir, or the last one used]."),
    s3_port: int | None = typer.Option(None, "--s3-port", help="Port for the S3 server [default: free port]."),
    tracking_port: int | None = typer.Option(None, "--tracking-port", help="Port for mlflow [default: free port]."),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for both servers to be healthy."),
) -> None:
    """Start the local stack (or report that it is already running) and write outputs.json."""
    from workloads.devstack.stack import LocalStack, LocalStackError

    with err_console.status("starting the local stack") as status_line:
        stack = LocalStack.at(workdir, on_status=status_line.update, backend_store_uri=backend_store_uri,
                              s3_port=s3_port, tracking_port=tracking_port)
        try:
            outputs = stack.up(timeout=timeout)
        except LocalStackError as exc:
            err_console.print(f"[red]local stack failed:[/red] {exc}")
            raise typer.Exit(1) from None
    state = "already running" if stack.was_running else "up"
    console.print(f"[green]local stack {state}[/green] in {stack.workdir}")
    console.print(f"  tracking  {outputs.tracking_uri}\n  s3        {outputs.s3_endpoint}\n"
                  f"  outputs   {stack.outputs_file}")


@local_app.command("down")
def local_down(workdir: str | None = _WORKDIR_OPTION) -> None:
    """Stop the local stack's processes (only ours); data stays in the workdir."""
    from workloads.devstack.stack import LocalStack, LocalStackError

    with err_console.status("stopping the local stack") as status_line:
        stack = LocalStack.at(workdir, on_status=status_line.update)
        try:
            stack.down()
        except LocalStackError as exc:
            err_console.print(f"[red]local stack:[/red] {exc}")
            raise typer.Exit(1) from None
    for warning in stack.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"local stack down; data kept in {stack.workdir}")


@local_app.command("status")
def local_status(
    workdir: str | None = _WORKDIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show each component's pid, URL and health. Exit code 0 only when everything is healthy."""
    from rich.table import Table

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


# --- training -------------------------------------------------------------------------------
# (workloads/train.py, workloads/data.py, workloads/sample.py)


@app.command()
def train(
    spec_path: str = typer.Argument(..., metavar="SPEC", help="Training spec (YAML), e.g. workloads/specs/churn.yaml."),
    stack: str = typer.Option(None, "--stack", help="Pulumi stack whose outputs to use (else the local stack)."),
    workdir: str = typer.Option(None, "--workdir", envvar="MLOPS_WORKDIR", help="Local stack workdir [.mlops/local]."),
    data_path: str = typer.Option(None, "--data", help="Train on this CSV/Parquet (path or s3:// URI) instead."),
    shard: int | None = typer.Option(None, "--shard", min=0,
                                     help="Only cross-validate this shard's candidates (i, i+N, ...) and log them; "
                                          "no registration. Needs --shards."),
    shards: int = typer.Option(1, "--shards", min=1, help="Number of search shards (with --shard or --select)."),
    select_step: bool = typer.Option(False, "--select",
                                     help="Wait for all --shards shards, then fit, gate and register the best."),
    group: str | None = typer.Option(None, "--group", envvar="MLOPS_SEARCH_GROUP",
                                     help="Search group shared by shards and select [default: spec hash + data digest]."),
    wait_timeout: float = typer.Option(3600.0, "--wait-timeout", min=0,
                                       help="--select: seconds to wait for the shards' finished runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress bar)."),
) -> None:
    """Train, register and gate a model from a spec: validated, versioned data in; champion or challenger out.

    On a cluster the search can fan out: `--shard I --shards N` in N pods, then `--select --shards N`.
    Exit codes: 2 bad spec, options or environment; 3 data validation failed; 1 training failed
    (e.g. shards missing); nothing is registered in any of these cases.
    """
    from workloads.data.dataset import DataError, DataValidationError, load
    from workloads.environment import StackError, resolve
    from workloads.training.job import (
        ShardResult,
        SpecError,
        TrainingError,
        TrainingSpec,
        TrainResult,
        format_uri,
        search_shard,
        select,
        summary_table,
    )
    from workloads.training.job import train as run_training

    result: ShardResult | TrainResult

    try:
        if shard is not None and select_step:
            raise SpecError("--shard and --select: choose one (shards search, select registers)")
        if shard is not None and shard >= shards:
            raise SpecError(f"--shard {shard}: must be below --shards {shards}")
        spec = TrainingSpec.from_yaml(spec_path)
        outputs = resolve(stack, workdir)
        outputs.apply_env()
        data = load(format_uri(data_path, outputs, "--data"), outputs) if data_path else None
        if shard is not None:
            result = search_shard(spec, outputs, shard, shards, group=group, data=data, progress=not as_json)
        elif select_step:
            result = select(spec, outputs, shards, group=group, data=data, progress=not as_json, timeout=wait_timeout)
        else:
            result = run_training(spec, outputs, data=data, progress=not as_json)
    except (SpecError, StackError, DataError) as exc:
        err_console.print(f"[red]{type(exc).__name__}[/red] {exc}")
        raise typer.Exit(2) from None
    except DataValidationError as exc:
        err_console.print(f"[red]data validation failed, nothing registered[/red]\n{exc}")
        raise typer.Exit(3) from None
    except TrainingError as exc:
        err_console.print(f"[red]training failed[/red] {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:  # a server went away mid-run: one line, not a traceback wall
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException | OSError) and "botocore" not in type(exc).__module__:
            raise
        where = os.environ.get("MLFLOW_TRACKING_URI", "the tracking server")
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        err_console.print(f"[red]training failed, nothing registered[/red]: {type(exc).__name__} talking to "
                          f"{where} or its artifact store: {first_line}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    elif isinstance(result, ShardResult):  # --shard
        best = "no candidates" if result.best is None else f"best {result.best.family} {result.best.params} " \
            f"cv {result.best.cv_score:.4f}"
        console.print(f"shard {result.shard}/{result.shards} of group {result.group}: "
                      f"{result.n_candidates} candidates, {best} (run {result.run_id})")
    else:
        console.print(summary_table(result))


data_app = typer.Typer(help="Datasets: generate sample data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("generate")
def data_generate(
    out: str = typer.Argument(..., help="Output file: .csv or .parquet."),
    rows: int = typer.Option(5000, "--rows", min=1, help="Number of rows."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same rows)."),
    shift: float = typer.Option(0.0, "--shift", help="Covariate shift, in standard deviations."),
    shift_features: str = typer.Option(
        None, "--shift-features", help="Comma-separated features to shift [monthly_charges,support_calls,contract]."
    ),
    concept_drift: float = typer.Option(0.0, "--concept-drift", min=0.0, max=1.0, help="0-1: change the label rule."),
    labels: bool = typer.Option(True, "--labels/--no-labels", help="Include the label column."),
    target: str = typer.Option("churned", "--target", help="churned (classification) or monthly_spend (regression)."),
    stack: str = typer.Option(None, "--stack", help="For an s3:// OUT: Pulumi stack whose store to write to."),
    workdir: str = typer.Option(None, "--workdir", envvar="MLOPS_WORKDIR",
                                help="For an s3:// OUT: local stack workdir [.mlops/local]."),
) -> None:
    """Write the sample churn dataset (optionally shifted "production" data) to CSV or Parquet.

    OUT may be an s3:// URI with stack placeholders, e.g. 's3://{data_bucket}/incoming/churn.parquet'
    (where workloads/specs/churn.yaml reads its data).
    """
    import io
    from pathlib import Path
    from urllib.parse import urlparse

    from botocore.exceptions import BotoCoreError, ClientError

    from workloads.data.sample import generate
    from workloads.environment import StackError, resolve
    from workloads.training.job import SpecError, format_uri

    if not out.lower().endswith((".csv", ".parquet")):
        err_console.print(f"[red]{out}: the output must end in .csv or .parquet[/red]")
        raise typer.Exit(2)
    features = [f.strip() for f in shift_features.split(",") if f.strip()] if shift_features else None
    try:
        df = generate(rows, seed, shift=shift, shift_features=features, concept_drift=concept_drift,
                      labels=labels, target=target)  # type: ignore[arg-type]
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if out.startswith("s3://"):
        try:
            outputs = resolve(stack, workdir)
            uri = format_uri(out, outputs, "OUT")
            url = urlparse(uri)
            buffer = io.BytesIO()
            df.to_csv(buffer, index=False) if uri.lower().endswith(".csv") else df.to_parquet(buffer, index=False)
            client = outputs.s3_client()
            client.put_object(Bucket=url.netloc, Key=url.path.lstrip("/"), Body=buffer.getvalue())
        except (StackError, SpecError) as exc:
            err_console.print(f"[red]{type(exc).__name__}[/red] {exc}")
            raise typer.Exit(2) from None
        except (BotoCoreError, ClientError) as exc:  # store down, no such bucket, denied
            err_console.print(f"[red]{uri}: could not write: {exc}[/red]")
            raise typer.Exit(1) from None
        console.print(f"wrote {len(df)} rows, {len(df.columns)} columns to {uri}")
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False) if out.lower().endswith(".csv") else df.to_parquet(path, index=False)
    console.print(f"wrote {len(df)} rows, {len(df.columns)} columns to {path}")

# --- serving --------------------------------------------------------------------------------
# (workloads/serve.py)


@app.command()
def serve(
    model: str = typer.Option(..., "--model", help="Registered model name."),
    alias: str = typer.Option("champion", "--alias", help="Registry alias to serve (resolved to a version)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (each batches and captures)."),
    max_batch_rows: int = typer.Option(256, "--max-batch-rows", min=1, help="Rows per predict call; 1 = off."),
    max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0, help="How long a batch waits for more."),
    max_body_bytes: int = typer.Option(16 * 1024 * 1024, "--max-body-bytes", min=1, help="Larger bodies get 413."),
    capture: bool = typer.Option(True, "--capture/--no-capture", help="Write inputs and outputs to S3."),
    endpoint_name: str | None = typer.Option(None, "--endpoint-name", help="Capture prefix (default: the model name)."),
    capture_flush_seconds: float = typer.Option(10.0, "--capture-flush-seconds", min=0.01),
    capture_batch_rows: int = typer.Option(50_000, "--capture-batch-rows", min=1, help="Flush at this many rows."),
    capture_max_buffer_rows: int = typer.Option(100_000, "--capture-max-buffer-rows", min=1,
                                                help="Rows kept in memory; beyond, records are dropped."),
    poll_seconds: float = typer.Option(30.0, "--poll-seconds", min=0, help="Check the alias; 0 disables."),
    bootstrap_poll_seconds: float = typer.Option(5.0, "--bootstrap-poll-seconds", min=0.1,
                                                 help="Registry polling while the alias does not resolve."),
    stack: str | None = typer.Option(None, "--stack", help="Pulumi stack to read outputs from."),
    workdir: str | None = typer.Option(None, "--workdir", envvar="MLOPS_WORKDIR",
                                       help="Local stack workdir [default: .mlops/local]."),
) -> None:
    """Serve models:/MODEL@ALIAS with MLflow's scoring protocol, micro-batching and inference capture."""
    from workloads.serving.app import ServeConfig, run
    from workloads.environment import StackError, resolve

    try:
        outputs = resolve(stack, workdir)
    except StackError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    outputs.apply_env()
    run(ServeConfig(
        model=model, alias=alias, host=host, port=port, workers=workers, max_batch_rows=max_batch_rows,
        max_wait_ms=max_wait_ms, max_body_bytes=max_body_bytes, capture=capture, endpoint_name=endpoint_name,
        capture_flush_seconds=capture_flush_seconds, capture_batch_rows=capture_batch_rows,
        capture_max_buffer_rows=capture_max_buffer_rows, poll_seconds=poll_seconds,
        bootstrap_poll_seconds=bootstrap_poll_seconds, outputs=outputs,
    ))

# --- monitoring -----------------------------------------------------------------------------
# (workloads/monitor.py)


@app.command("monitor")
def monitor_cmd(
    endpoint: str = typer.Option(..., "--endpoint", help="Endpoint name (its capture prefix)."),
    model: str = typer.Option(..., "--model", help="Registered model name."),
    alias: str = typer.Option("champion", "--alias", help="Registry alias the endpoint serves."),
    window_hours: float = typer.Option(24.0, "--window-hours", min=0.01, help="Window: the last H hours."),
    window_records: int | None = typer.Option(None, "--window-records", min=1,
                                              help="Window: the last N records (instead of hours)."),
    labels: str | None = typer.Option(None, "--labels", help="Ground truth: CSV/Parquet path, s3:// URI or prefix "
                                      "with request_id, [row,] label."),
    retrain_spec: str | None = typer.Option(None, "--retrain-spec",
                                            help="Spec for retraining [default: the champion run's spec.yaml]."),
    retrain: bool = typer.Option(True, "--retrain/--no-retrain", help="Retrain on drift or decay."),
    min_rows: int = typer.Option(200, "--min-rows", min=1, help="Fewer captured rows: insufficient_data."),
    min_labelled_rows: int = typer.Option(50, "--min-labelled-rows", min=1, help="Fewer: no metric."),
    drift_share: float = typer.Option(0.3, "--drift-share", min=0.0, max=1.0, help="Drift when this share drifts."),
    psi_threshold: float = typer.Option(0.2, "--psi-threshold", min=0.0, help="Drift when any feature's PSI reaches it."),
    metric_drop: float = typer.Option(0.05, "--metric-drop", min=0.0, help="Decay when the metric drops more."),
    cooldown_hours: float = typer.Option(6.0, "--cooldown-hours", min=0.0, help="Hours between retrainings."),
    alert_webhook: str | None = typer.Option(None, "--alert-webhook", help="POST alerts (JSON) here."),
    alert_sns_topic_arn: str | None = typer.Option(None, "--alert-sns-topic-arn", help="Publish alerts to SNS."),
    output: str | None = typer.Option(None, "--output", help="Also write the JSON summary to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON summary instead of a table."),
    stack: str | None = typer.Option(None, "--stack", help="Pulumi stack to read outputs from."),
    workdir: str | None = typer.Option(None, "--workdir", envvar="MLOPS_WORKDIR",
                                       help="Local stack workdir (alerts.jsonl goes here) [default: .mlops/local]."),
) -> None:
    """Check an endpoint's captured traffic for drift and decay; alert and retrain above the thresholds.

    Exit codes: 0 ok, drift, performance_decay or insufficient_data (handled); 3 data_integrity_failure;
    1 the monitor could not finish (storage or registry down; nothing alerted or retrained) or retraining failed;
    2 bad options or no environment.
    """
    from contextlib import nullcontext
    from pathlib import Path

    from workloads.monitoring.monitor import MonitorConfig, MonitorError, monitor
    from workloads.environment import StackError, resolve, workdir_from

    try:
        outputs = resolve(stack, workdir)
        outputs.apply_env()
        config = MonitorConfig(
            window_hours=window_hours, window_records=window_records, min_rows=min_rows,
            min_labelled_rows=min_labelled_rows, drift_share=drift_share, psi_threshold=psi_threshold,
            metric_drop=metric_drop, cooldown_hours=cooldown_hours, alert_webhook=alert_webhook,
            alert_sns_topic_arn=alert_sns_topic_arn, retrain=retrain,
        )
        with nullcontext() if as_json else console.status(f"monitoring {endpoint}"):
            result = monitor(endpoint, model, outputs, alias=alias, config=config, labels=labels,
                             retrain_spec=Path(retrain_spec) if retrain_spec else None, workdir=workdir_from(workdir))
    except StackError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except MonitorError as exc:
        err_console.print(f"[red]monitoring failed, nothing alerted or retrained:[/red] {exc}")
        raise typer.Exit(1) from None
    summary = result.model_dump_json(indent=2)
    if output:
        Path(output).write_text(summary)
    if as_json:
        typer.echo(summary)
    else:
        from workloads.monitoring.monitor import summary_table

        console.print(summary_table(result))
    raise typer.Exit(result.exit_code)

# --- quickstart -----------------------------------------------------------------------------


@app.command()
def quickstart(
    workdir: Path = typer.Option(Path(".mlops/quickstart"), "--workdir",
                                 help="The demo's own local stack (wiped and recreated at start)."),
    down: bool = typer.Option(False, "--down", help="Stop the local stack at the end."),
    train_rows: int = typer.Option(4000, "--train-rows", min=200, help="Rows of training data."),
    window_rows: int = typer.Option(600, "--window-rows", min=50, help="Rows of traffic per monitoring window."),
    seed: int = typer.Option(7, "--seed", help="Seed for every generated table."),
) -> None:
    """The whole loop on 127.0.0.1: stack, train, serve, capture, monitor, drift, retrain, reload."""
    from workloads.devstack.quickstart import QuickstartError, Sizes, run

    try:
        run(workdir, Sizes(train_rows=train_rows, window_rows=window_rows, seed=seed), down=down, console=console)
    except QuickstartError as exc:
        err_console.print(f"[red]quickstart failed[/red] {exc}")
        raise typer.Exit(1) from None

# --- short-lived environments ---------------------------------------------------------------
# (workloads/envs.py)

env_app = typer.Typer(help="Short-lived ci environments (needs the Pulumi CLI): create, smoke, destroy, reap.",
                      no_args_is_help=True)
app.add_typer(env_app, name="env")


def _environments(with_cluster: bool = True):  # noqa: ANN202 (lazy import)
    from workloads.ci.environments import EnvError, production

    try:
        return production(with_cluster=with_cluster)
    except EnvError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _env_call(fn, *args):  # noqa: ANN001, ANN202
    from workloads.ci.environments import EnvError

    try:
        return fn(*args)
    except EnvError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@env_app.command("create")
def env_create(
    name: str = typer.Argument(..., help="Environment (and stack) name: ci-<id>."),
    ttl: str = typer.Option("3h", "--ttl", help="Time to live (90m, 6h, 2d): after it, `mlops env reap` destroys it."),
) -> None:
    """Create stack NAME from stacks/Pulumi.ci.yaml and `pulumi up` it (destroyed again if up fails)."""
    from workloads.ci.environments import EnvError, check_name, parse_duration

    try:
        check_name(name)
        lifetime = parse_duration(ttl)
    except EnvError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    outputs = _env_call(_environments(with_cluster=False).create, name, lifetime)
    typer.echo(json.dumps(outputs, indent=2, default=str))


@env_app.command("smoke")
def env_smoke(name: str = typer.Argument(..., help="Environment name: ci-<id>.")) -> None:
    """Train a small model, get a prediction from the endpoint, run the monitor, in NAME."""
    _env_call(_environments().smoke, name)
    console.print(f"[green]{name}: smoke test passed[/green]")


@env_app.command("destroy")
def env_destroy(name: str = typer.Argument(..., help="Environment name: ci-<id>.")) -> None:
    """Destroy NAME and remove its stack, then fail (exit 1) listing anything still tagged or in its namespace."""
    leaks = _env_call(_environments().destroy, name)
    if leaks:
        err_console.print(f"[red]{name} leaked {len(leaks)} resource(s):[/red]")
        for leak in leaks:
            err_console.print(f"  {leak}")
        raise typer.Exit(1)
    console.print(f"[green]{name}: destroyed, nothing leaked[/green]")


@env_app.command("reap")
def env_reap(
    older_than: str = typer.Option("6h", "--older-than", help="Also destroy ci environments created before this."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be destroyed."),
) -> None:
    """Destroy ci environments past their TTL tag or older than --older-than (never dev, staging, prod)."""
    from workloads.ci.environments import EnvError, parse_duration

    try:
        age = parse_duration(older_than)
    except EnvError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    results = _env_call(_environments().reap, age, dry_run)
    failed = {k: v for k, v in results.items() if v}
    for name in results:
        console.print(f"{'would destroy' if dry_run else 'destroyed'} {name}"
                      + (f" [red]{failed[name]}[/red]" if name in failed else ""))
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
