"""MLflow's scoring protocol: request parsing, response bytes and error bodies.

What `mlflow.pyfunc.scoring_server.invocations` does, with MLflow's own parsers and messages,
so statuses and texts match the stock server: 415 for a wrong content type, 400 for bad input
and for exceptions inside predict, `{"error_code", "message"}` bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO, StringIO
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException

    from workloads.serving.limits import RequestLimits
    from workloads.serving.model import LoadedModel

JSON = "application/json"
TEXT = "text/plain"
PLAIN_JSON = frozenset({JSON, "application/json; charset=utf-8"})  # the content types the fast path takes


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, body and media type."""

    status: int
    body: str
    media_type: str = JSON


class Reject(Exception):
    """A request answered without predicting."""

    def __init__(self, status: int, body: str, media_type: str = JSON) -> None:
        super().__init__(body)
        self.answer = Answer(status, body, media_type)


def error(status: int, error_code: str, message: str) -> Reject:
    return Reject(status, json.dumps({"error_code": error_code, "message": message}))


def mlflow_error(exc: MlflowException) -> Reject:
    return Reject(exc.get_http_status_code(), exc.serialize_as_json())


def predict_failed() -> Reject:
    """The stock server's answer to an exception inside predict."""
    return error(400, "BAD_REQUEST", "Encountered an unexpected error while evaluating the model. Verify that "
                 "the serialized input Dataframe is compatible with the model for inference.")


def unsupported_type(content_type: str | None) -> Reject:
    from mlflow.pyfunc.scoring_server import CONTENT_TYPES

    return Reject(415, f"This predictor only supports the following content types: Types: {CONTENT_TYPES}. "
                       f"Got '{content_type}'.", TEXT)


def parse_request(body: bytes, content_type: str | None, model: LoadedModel, limits: RequestLimits,
                  payload: Any = None) -> tuple[Any, dict | None, bool]:
    """(data, params, unified_llm) from a request, with MLflow's own parsers and messages.

    `limits` are checked before a parser builds anything; `payload` is the JSON body already
    decoded (and checked) by the fast path, if it was.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST
    from mlflow.pyfunc import scoring_server as ss
    from mlflow.utils.proto_json_utils import MlflowInvalidInputException

    if not content_type:  # stock mlflow answers 500 here; a missing header is the client's error
        raise unsupported_type(content_type)
    mime_type = _checked_mime_type(content_type)
    try:
        if mime_type == ss.CONTENT_TYPE_CSV:
            limits.check_csv(body)
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as ex:
                raise MlflowInvalidInputException(
                    f"Ensure that input is a valid UTF-8 encoded string. Error: '{ex!r}'"
                ) from ex
            return with_missing(ss.parse_csv_input(csv_input=StringIO(text), schema=model.input_schema)), None, False
        if mime_type == ss.CONTENT_TYPE_JSON:
            if payload is None:
                payload = limits.json_payload(body)
            # A decoded object is parsed as is; anything else again from the bytes, for MLflow's message.
            parsed = ss._parse_json_data(_as_frame_payload(payload, model) if isinstance(payload, dict) else body,
                                         model.pyfunc.metadata, model.input_schema)
            return with_missing(parsed.data), parsed.params, parsed.is_unified_llm_input
        if mime_type == ss.CONTENT_TYPE_PARQUET:
            limits.check_parquet(body)
            return with_missing(ss.parse_parquet_input(parquet_input=BytesIO(body))), None, False
    except (MlflowException, Reject):
        raise
    except Exception as exc:  # anything else a parser raises is still the payload's fault
        # error_code takes the proto enum: the string "BAD_REQUEST" would turn into a 500.
        raise MlflowException(f"Failed to parse the request body: {exc}", error_code=BAD_REQUEST) from None
    raise unsupported_type(content_type)


def with_missing(data: Any) -> Any:
    """A parsed DataFrame with `null`/None/NaN/"" as the NaN training imputes (workloads/data/missing.py:
    one definition of missing on both paths); anything else (tensors, LLM input) as it is."""
    import pandas as pd

    from workloads.data import missing

    return missing.normalized(data) if isinstance(data, pd.DataFrame) else data


def _as_frame_payload(payload: dict, model: LoadedModel) -> dict:
    """`inputs`/`instances` holding a `null` as `dataframe_split`/`dataframe_records`, for a model of named
    scalar columns: MLflow turns those shapes into arrays of the schema's type, so a `null` in a text column
    would reach the model as the string "None", a category training never saw (measured: 10 of 300 rows
    answered differently). Every other payload is left exactly to MLflow."""
    key = next((k for k in ("inputs", "instances") if k in payload), None)
    value = payload.get(key) if key else None
    if model.fast is None or not value:
        return payload
    rest = {k: v for k, v in payload.items() if k != key}
    if type(value) is dict:
        columns = list(value.values())
        if (all(type(v) is list for v in columns) and len({len(v) for v in columns}) == 1
                and any(x is None for v in columns for x in v)):
            rows = [list(row) for row in zip(*columns, strict=True)]
            return {**rest, "dataframe_split": {"columns": list(value), "data": rows}}
    elif type(value) is list and all(type(r) is dict for r in value) and any(
            x is None for r in value for x in r.values()):
        return {**rest, "dataframe_records": value}
    return payload


def _checked_mime_type(content_type: str) -> str:
    """The MIME type; content-type parameters checked as scoring_server.invocations checks them."""
    from mlflow.pyfunc.scoring_server import SCORING_PROTOCOL_CHANGE_INFO

    type_parts = list(map(str.strip, content_type.split(";")))
    parameter_values = {key: value for pair in type_parts[1:] for key, _, value in [pair.partition("=")]}
    if parameter_values.get("charset", "utf-8").lower() != "utf-8":
        raise Reject(415, "The scoring server only supports UTF-8", TEXT)
    if unexpected := set(parameter_values).difference({"charset"}):
        raise Reject(415, f"Unrecognized content type parameters: {', '.join(unexpected)}. "
                          f"{SCORING_PROTOCOL_CHANGE_INFO}", TEXT)
    return type_parts[0]


def predictions_json(predictions: Any, unified_llm: bool) -> str:
    """The response body, byte for byte what the stock server writes."""
    from mlflow.pyfunc import scoring_server as ss

    out = StringIO()
    (ss.unwrapped_predictions_to_json if unified_llm else ss.predictions_to_json)(predictions, out)
    return out.getvalue()


def fast_predictions_json(predictions: Any) -> str | None:
    """MLflow's response bytes for a plain numeric array, without its generic encoder; else None."""
    import numpy as np

    if isinstance(predictions, np.ndarray) and predictions.dtype.kind in "biuf":
        # MLflow writes json.dump({"predictions": array.tolist()}): the same floats' repr, same separators.
        return '{"predictions": ' + json.dumps(predictions.tolist()) + "}"
    return None


def response_json(predictions: Any, unified_llm: bool = False) -> str:
    """The response body: the hand-built one where it is byte-identical, else MLflow's encoder."""
    return (None if unified_llm else fast_predictions_json(predictions)) or predictions_json(predictions, unified_llm)
