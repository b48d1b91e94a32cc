"""`mlops data generate`: sample data for demos and tests (workloads/data/)."""

from __future__ import annotations

from workloads.cli.app import STACK, WORKDIR, app, console
from workloads.cli.options import App
from workloads.settings import GenerateSettings

data_app = App(help="Datasets: generate sample data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.settings_command(GenerateSettings, "generate")
def generate(settings: GenerateSettings, stack: str | None = STACK, workdir: str | None = WORKDIR) -> None:
    """Write the sample churn dataset (optionally shifted "production" data) to CSV or Parquet.

    OUT may be an s3:// URI with stack placeholders, e.g. 's3://{data_bucket}/incoming/churn.parquet'
    (where workloads/specs/churn.yaml reads its data); --stack/--workdir then say which store.
    """
    from workloads.data.sample import write_sample
    from workloads.environment import environment

    env = environment(stack, workdir) if settings.out.startswith("s3://") else None  # a local file needs none
    where, rows, columns = write_sample(settings, env)
    console.print(f"wrote {rows} rows, {columns} columns to {where}")
