"""Typer commands built from the settings contract, and the CLI's one error handler.

`App.settings_command(Model)` turns every field of a `workloads.settings` model into an option
(or an argument) with the model's default and help text; what the user typed is validated by
the model itself, so bounds exist only there. A command function receives the validated
settings first, then its own presentation options (`--stack`, `--json`, ...).

`App.command` wraps every command in one handler: an `MlopsError` prints one line and exits
with its code; no command maps errors to exit codes itself.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from workloads.errors import MlopsError, UsageError
from workloads.settings import Settings, option_name

err_console = Console(stderr=True)


class App(typer.Typer):
    """A Typer app whose commands share one error handler and can be built from settings models."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # type: ignore[override]
        register = super().command(*args, **kwargs)
        return lambda fn: register(_handled(fn))

    def settings_command(self, model: type[Settings], name: str | None = None,
                         **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.command(name, **kwargs)(_with_settings(fn, model))
            return fn
        return decorate


def fail(exc: MlopsError) -> typing.NoReturn:
    # markup/emoji off: messages quote user values such as `[m6i.large]` or `:cloud:` verbatim.
    err_console.print(f"[red]{exc.kind}:[/red] ", end="")
    err_console.print(str(exc), markup=False, emoji=False, highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlopsError as exc:
            fail(exc)
    return run


# --- settings -> options ---------------------------------------------------------------------


def _with_settings(fn: Callable[..., Any], model: type[Settings]) -> Callable[..., Any]:
    own = list(inspect.signature(fn).parameters.values())[1:]  # the first one receives the settings
    hints = typing.get_type_hints(fn)
    params = [*settings_parameters(model), *(p.replace(annotation=hints.get(p.name, str),
                                                       kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]

    def command(**values: Any) -> Any:
        settings = validate(model, {k: values.pop(k) for k in model.model_fields})
        if _check_only():
            typer.echo(json.dumps({"command": model.__name__, "settings": settings.model_dump(mode="json")}))
            return None
        return fn(settings, **values)

    command.__name__, command.__doc__ = fn.__name__, fn.__doc__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def settings_parameters(model: type[Settings]) -> list[inspect.Parameter]:
    params = []
    for name, info in model.model_fields.items():
        annotation = _cli_type(info.annotation)
        default = ... if info.is_required() else info.default
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("argument"):
            spec = typer.Argument(default, metavar=name.upper(), help=escape(info.description or ""))
        else:
            decl = option_name(name)
            if annotation is bool:
                decl = f"{decl}/--no-{name.replace('_', '-')}"
            envvar = extra.get("envvar")
            spec = typer.Option(default, decl, help=escape(info.description or ""), envvar=str(envvar) if envvar else None)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=spec, annotation=annotation))
    return params


def _cli_type(annotation: Any) -> Any:
    """What Typer parses; the model validates. Literals parse as str, `X | None` as Optional[X]."""
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return str
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return typing.Optional[_cli_type(inner[0])]  # noqa: UP045 - Typer needs typing.Optional
    return annotation


def validate(model: type[Settings], values: dict[str, Any]) -> Settings:
    """The model's own validation; an error names the option, the value and what is allowed."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise UsageError("; ".join(_describe(model, e, values) for e in exc.errors())) from None


def _describe(model: type[Settings], error: Any, values: dict[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field = str(error["loc"][0])
    info = model.model_fields.get(field)
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    name = field.upper() if extra.get("argument") else option_name(field)
    return f"{name} {values.get(field)!r}: {message}"


# Set by the app's `--check` option for this invocation (a ContextVar: in-process callers nest safely).
CHECK_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("mlops_check_only", default=False)


def _check_only() -> bool:
    return CHECK_ONLY.get()
