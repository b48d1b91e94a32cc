"""`mlops plan`: render an environment offline and print it as a resource tree, the way `pulumi preview` nests it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from workloads.cli.app import app, console
from workloads.errors import ConfigInvalid, UsageError

if TYPE_CHECKING:  # importing pulumi costs a second: only `mlops plan` pays it
    from components.render import RenderedResource, RenderResult


@app.command()
def plan(
    stack: str = typer.Argument(..., help="Stack name (dev, staging, prod, ci, local) or a path to a stack file."),
    as_json: bool = typer.Option(False, "--json", help="Print resources (or with --cost, the estimate) as JSON."),
    cost: bool = typer.Option(False, "--cost", help="Monthly cost estimate per resource instead of the tree."),
    baseline: Path | None = typer.Option(None, "--baseline", help="With --cost: compare with a `--cost --json` "
                                         "file and print the delta as Markdown (what the preview posts on a PR)."),
) -> None:
    """Render an environment offline (no cloud, no credentials) and print its resource tree or its cost."""
    from components.config import ConfigError
    from components.render import render_stack

    try:
        result = render_stack(stack)
    except ConfigError as exc:
        raise ConfigInvalid(str(exc)) from None
    if cost:
        print_cost(result, as_json=as_json, baseline=baseline)
    elif as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print_plan(result, console)


def print_cost(result: RenderResult, *, as_json: bool, baseline: Path | None) -> None:
    from components.cost import diff, estimate
    from components.prices import PriceError

    try:
        report = estimate(result)
    except PriceError as exc:
        raise UsageError(str(exc)) from None
    if baseline is not None:
        typer.echo(diff(json.loads(baseline.read_text()), report.to_json()))
    elif as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        console.print(report.table())


def _label(resource: RenderedResource) -> str:
    flags = []
    if resource.protect:
        flags.append("[yellow]protect[/yellow]")
    if resource.retain_on_delete:
        flags.append("[yellow]retain[/yellow]")
    suffix = f" ({', '.join(flags)})" if flags else ""
    style = "bold" if not resource.custom else ""
    name = f"[{style}]{resource.name}[/{style}]" if style else resource.name
    return f"{name} [dim]{resource.type}[/dim]{suffix}"


def print_plan(result: RenderResult, console: Console) -> None:
    tree = Tree(f"[bold]stack {result.stack}[/bold] [dim]({len(result.resources)} resources)[/dim]")
    known = {r.urn for r in result.resources}
    children: dict[str | None, list[RenderedResource]] = {}
    for resource in result.resources:
        children.setdefault(resource.parent if resource.parent in known else None, []).append(resource)

    def add(node: Tree, parent: str | None) -> None:
        # Components first, then resources; each group by name, so the tree is stable.
        for resource in sorted(children.get(parent, []), key=lambda r: (r.custom, r.name)):
            add(node.add(_label(resource)), resource.urn)

    add(tree, None)
    console.print(tree)

    counts = Counter(r.type for r in result.resources if r.custom)
    summary = Table(title="resources by type", show_edge=False)
    summary.add_column("type")
    summary.add_column("count", justify="right")
    for type_, count in sorted(counts.items()):
        summary.add_row(type_, str(count))
    console.print(summary)

    outputs = Table(title="stack outputs", show_edge=False)
    outputs.add_column("output")
    outputs.add_column("value")
    for key, value in result.outputs.items():
        outputs.add_row(key, "[secret]" if key in result.secret_outputs else str(value))
    console.print(outputs)
