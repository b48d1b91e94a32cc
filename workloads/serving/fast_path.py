"""The fast path: common JSON requests checked in pure Python, one DataFrame per batch.

MLflow's per-request parsing builds and casts a DataFrame for every request: milliseconds of
pandas work on the event loop. For the common case (a JSON body in one of the four standard
shapes, exactly the signature's columns, values of exactly the right Python types) the event
loop only runs json.loads and a pure-Python check; the predictor thread builds ONE DataFrame
per batch and runs MLflow's own casting and schema enforcement on it once. Anything else, and
any batch that fails, goes through the MLflow path, which owns every error message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from workloads.serving.model import LoadedModel

# Signature types whose JSON values map one-to-one onto Python types (bool is not an int here).
_FAST_TYPES: dict[str, frozenset[type]] = {
    "double": frozenset({float, int}), "float": frozenset({float, int}),
    "long": frozenset({int}), "integer": frozenset({int}),
    "string": frozenset({str}), "boolean": frozenset({bool}),
}
_RECORD_KEYS = ("dataframe_records", "instances", "inputs")


@dataclass(frozen=True)
class FastInput:
    """One request's values, column by column in signature order."""

    columns: list[list]
    rows: int


class Fallback(Exception):
    """The fast path declined this request after all: serve it through the MLflow path."""


@dataclass(frozen=True)
class FastSchema:
    """The model's column names and accepted value types, for the cheap per-request check."""

    names: tuple[str, ...]
    types: tuple[frozenset[type], ...]

    @classmethod
    def of(cls, schema: Any) -> FastSchema | None:
        """None unless every input is a named scalar column (no tensors, arrays, objects, binary)."""
        from mlflow.types.schema import ColSpec, DataType

        if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
            return None
        specs = schema.inputs
        if not all(isinstance(c, ColSpec) and isinstance(c.type, DataType) and c.type.name in _FAST_TYPES
                   for c in specs):
            return None
        return cls(tuple(c.name for c in specs), tuple(_FAST_TYPES[c.type.name] for c in specs))

    def parse(self, body: bytes) -> FastInput | None:
        """The request's columns, or None when it is not the common case."""
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # invalid JSON or UTF-8, or nested too deep
            return None
        return self.from_payload(payload)

    def from_payload(self, payload: Any) -> FastInput | None:
        """The decoded body's columns, or None when it is not the common case."""
        if type(payload) is not dict or len(payload) != 1:  # params, two format keys, LLM input...
            return None
        ((key, value),) = payload.items()
        if key == "dataframe_split":
            columns = self._from_split(value)
        elif key in _RECORD_KEYS and type(value) is list:
            columns = self._from_records(value)
        elif key == "inputs" and type(value) is dict:
            columns = self._from_dict(value)
        else:
            return None
        if columns is None or not all({type(v) for v in col} <= ok for col, ok in zip(columns, self.types, strict=True)):
            return None
        return FastInput(columns, len(columns[0]))

    def _from_split(self, split: Any) -> list[list] | None:
        if type(split) is not dict or split.keys() != {"columns", "data"} or split["columns"] != list(self.names):
            return None
        data, width = split["data"], len(self.names)
        if type(data) is not list or not data or not all(type(r) is list and len(r) == width for r in data):
            return None
        return [list(col) for col in zip(*data, strict=True)]  # lengths checked

    def _from_records(self, records: list) -> list[list] | None:
        names = self.names
        if not records or not all(type(r) is dict and r.keys() == set(names) for r in records):
            return None
        return [[r[n] for r in records] for n in names]

    def _from_dict(self, columns: dict) -> list[list] | None:
        if columns.keys() != set(self.names):
            return None
        values = [columns[n] for n in self.names]
        if not all(type(v) is list for v in values) or not values[0] or len({len(v) for v in values}) != 1:
            return None
        return values


def batch_input(model: LoadedModel, inputs: list[FastInput]) -> tuple[pd.DataFrame, dict | None]:
    """Predictor thread: one validated DataFrame (and params) for a batch of fast inputs.

    The same casting MLflow's JSON parser applies, then the same enforcement predict applies;
    raises whatever they raise (the batch then falls back to the MLflow path).
    """
    import pandas as pd
    from mlflow.utils.proto_json_utils import cast_df_types_according_to_schema

    from workloads.serving.protocol import with_missing

    if model.fast is None:  # FastInput only comes from model.fast.parse
        raise RuntimeError(f"{model.name} v{model.version}: fast-path batch for a model without a fast schema")
    names = model.fast.names
    merged = {n: [v for data in inputs for v in data.columns[i]] for i, n in enumerate(names)}
    frame = cast_df_types_according_to_schema(pd.DataFrame(merged, columns=list(names)), model.input_schema)
    return model.validate(with_missing(frame), None)  # `""` is missing here too (protocol.with_missing)
