"""One line per config problem: the stack file key, the value and what is allowed.

`mlops-platform:serving.endpoints[1].replicas.min: -1 is below 0 (allowed: 0 to 100)`.
The model's own constraints (bounds, known keys) fill in "what is allowed", so a new
field gets a helpful message without a new string here.
"""

from __future__ import annotations

import json
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from components.config_values import QUOTE_IT

VALUE_MAX_CHARS = 80  # a pasted certificate or a 1 MB string must not flood the terminal
_RELATIVE_KEY = re.compile(r"^[A-Za-z]\w*(\[[0-9]+\]|\.[A-Za-z]\w*)*: ")
_NUMBER_ERRORS = {"int_parsing", "int_type", "int_from_float", "float_parsing",
                  "float_type", "finite_number", "decimal_parsing"}


def format_validation_error(exc: ValidationError, project: str, model: type[BaseModel]) -> str:
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        path = format_loc(loc)
        value = error.get("input")
        explanation = _explain(error, model)
        if not loc:
            # Whole-environment rules name their own keys: "protection.forceDestroy: ...".
            line = f"{project}:{explanation}"
        elif isinstance(value, dict) and _RELATIVE_KEY.match(explanation):
            # A rule across a section's keys starts with the key it is about: `minSize: 9 is above ...`.
            line = f"{project}:{path}.{explanation}"
        elif error["type"] == "missing" or isinstance(value, dict):
            # Otherwise the section's dict would be noise: the message names the keys.
            line = f"{project}:{path}: {explanation}"
        else:
            line = f"{project}:{path}: {show_value(value)} {explanation}"
        lines.append(" ".join(line.split("\n")))
    return "\n".join(lines)


def show_value(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= VALUE_MAX_CHARS else f"{text[:VALUE_MAX_CHARS]}...({len(text)} characters)"


def format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(root)"


def _explain(error: ErrorDetails, model: type[BaseModel]) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    allowed = _allowed_range(model, error["loc"])
    if kind == "greater_than_equal":
        return f"is below {_number(ctx['ge'])}{allowed}"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}{allowed}"
    if kind == "less_than_equal":
        return f"is above {_number(ctx['le'])}{allowed}"
    if kind == "int_parsing_size":
        return f"is too large{allowed}"
    if kind in _NUMBER_ERRORS:
        return f"is not a {'whole' if kind.startswith('int') else 'finite'} number{allowed}"
    if kind == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        return f"is not a known key (check the spelling); known keys here: {known}"
    if kind == "missing":
        return "is required"
    if kind in ("enum", "literal_error"):
        return f"is not allowed; expected {'one of ' if kind == 'enum' else ''}{ctx.get('expected')}"
    if kind == "string_type" and isinstance(error.get("input"), (int, float)):
        return f"was read by YAML as a number; {QUOTE_IT}"
    if kind == "string_pattern_mismatch":
        return f"does not match the pattern {ctx.get('pattern')}"
    if kind == "bool_parsing":
        return "is not a boolean; use true or false"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping of keys to values"
    if kind == "list_type":
        return "must be a list, e.g. [a, b]"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    return error["msg"][0].lower() + error["msg"][1:]


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the key at `loc`, and the key's field (None when it is not a field)."""
    current: type[BaseModel] | None = model
    holder, info = model, None
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None:
            return None, None
        fields = {f.alias or name: f for name, f in current.model_fields.items()}
        info = fields.get(part)
        if info is None:
            return current, None
        holder, current = current, _model_in(info.annotation)
    return (holder if info else current), info


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    holder = _field_at(model, loc)[1] if loc else None
    section = _model_in(holder.annotation) if holder else model
    if section is None:
        return "(none)"
    return ", ".join(sorted(f.alias or n for n, f in section.model_fields.items()))


def _allowed_range(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """`(allowed: 1 to 20)` from the field's ge/gt/le/lt, or '' when it has none."""
    info = _field_at(model, loc)[1]
    if info is None:
        return ""
    low = high = ""
    for item in _constraints(info):
        if isinstance(item, annotated_types.Ge):
            low = f"from {_number(item.ge)}"
        elif isinstance(item, annotated_types.Gt):
            low = f"more than {_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            high = f"up to {_number(item.le)}"
        elif isinstance(item, annotated_types.Lt):
            high = f"below {_number(item.lt)}"
    allowed = " ".join(part for part in (low, high) if part).replace("from 0 up to", "from 0 to")
    return f" (allowed: {allowed})" if allowed else ""


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _constraints(info: FieldInfo) -> list[Any]:
    found = list(info.metadata)
    pending = [info.annotation]
    while pending:
        annotation = pending.pop()
        if get_origin(annotation) is Annotated:
            for meta in get_args(annotation)[1:]:
                found.extend(meta.metadata if isinstance(meta, FieldInfo) else [meta])
        elif get_origin(annotation) in (Union, types.UnionType):
            pending.extend(get_args(annotation))
    return found
