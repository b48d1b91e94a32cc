"""Rows and decoded size bounded per request, for every input format, before a DataFrame is built.

Each oversized request goes through `ServingApp.invocations` with tripwires on everything that
would build a frame (MLflow's parsers and the predictor): the answer must be a 413 naming the
limit, and no tripwire may fire. The same shapes within the limits still score.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.serving.helpers import SMALL_NAMES, small_frame
from tests.serving.test_app import serving_app
from workloads.serving.admission import Admission
from workloads.serving.limits import RequestLimits, arrow_bytes
from workloads.serving.model import LoadedModel

JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"
ROW = [0.5, -1.0, 2.0, 3, "pro"]


def split(rows: int, **extra: Any) -> bytes:
    return json.dumps({"dataframe_split": {"columns": SMALL_NAMES, "data": [ROW] * rows, **extra}}).encode()


def records(key: str, rows: int) -> bytes:
    return json.dumps({key: [dict(zip(SMALL_NAMES, ROW, strict=True))] * rows}).encode()


def parquet(table: pa.Table, **options: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def constant_rows(n: int) -> pa.Table:
    """n rows of one repeated row of the small model's columns: a few kB of Parquet."""
    zeros = pa.array(np.zeros(n, dtype=np.int32))
    floats = pa.DictionaryArray.from_arrays(zeros, pa.array([0.5]))
    return pa.table({"x0": floats, "x1": floats, "x2": floats,
                     "n": pa.DictionaryArray.from_arrays(zeros, pa.array([3])),
                     "plan": pa.DictionaryArray.from_arrays(zeros, pa.array(["pro"]))})


def csv(rows: int) -> bytes:
    return small_frame(1, 0).loc[[0] * rows].to_csv(index=False).encode()


INDEX_BOMB = split(1, index=list(range(1_500_000)))  # one row, 1.5M predictions if pandas got it
OVERSIZED: dict[str, tuple[bytes, str, str]] = {
    # label: (body, content type, what the message must name)
    "split rows": (split(101), JSON, "dataframe_split.data has 101 rows; the limit is 100 rows"),
    "split index of 1.5M entries": (INDEX_BOMB, JSON, "the JSON body decodes to about 45.8 MiB"),
    "split index, decoded size allowed": (INDEX_BOMB, JSON, "dataframe_split.index has 1500000 rows"),
    "records rows": (records("dataframe_records", 101), JSON, "dataframe_records has 101 rows"),
    "instances rows": (records("instances", 101), JSON, "instances has 101 rows"),
    "inputs rows": (records("inputs", 101), JSON, "inputs has 101 rows"),
    "inputs columns": (json.dumps({"inputs": {n: [v] * 101 for n, v in zip(SMALL_NAMES, ROW, strict=True)}}).encode(),
                       JSON, "inputs has 101 rows"),
    # 100 rows whose keys never repeat: pandas would build 100 x 10,000 cells.
    "records with fresh keys": (json.dumps({"dataframe_records": [{f"k{i}_{j}": 1 for j in range(100)}
                                                                  for i in range(100)]}).encode(),
                                JSON, "dataframe_records decodes to about 7.6 MiB; the limit is 1.0 MiB"),
    "json structure": (b'{"dataframe_split": {"data": [' + b"[]," * 20_000 + b"[]]}}", JSON,
                       "the JSON body decodes to about"),
    "csv rows": (csv(101), CSV, "the CSV body has 101 rows"),
    "parquet of 10M rows": (parquet(constant_rows(10_000_000), compression="zstd"), PARQUET,
                            "the Parquet body has 10000000 rows"),
    # 50 rows of one 1 MB string, dictionary-encoded: a few kB on the wire, 50 MB decoded.
    "parquet repeated string": (parquet(pa.table({"plan": pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(50, dtype=np.int32)), pa.array(["x" * 1_000_000]))}), compression="zstd"),
        PARQUET, "the Parquet body decodes to about"),
}


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly if anything builds a frame or predicts."""
    from mlflow.pyfunc import scoring_server as ss

    fired: list[str] = []

    def wire(name: str) -> Any:
        def tripped(*args: Any, **kwargs: Any) -> Any:
            fired.append(name)
            raise AssertionError(f"{name} ran for an oversized request")
        return tripped

    for name in ("parse_csv_input", "parse_parquet_input", "_parse_json_data"):
        monkeypatch.setattr(ss, name, wire(name))
    monkeypatch.setattr(pd, "read_parquet", wire("read_parquet"))
    return fired


def score(model: LoadedModel, body: bytes, ctype: str, **settings: Any) -> tuple[int, str]:
    app = serving_app(**{"max_request_rows": 100, "max_decoded_bytes": 1024**2, **settings})

    async def run() -> tuple[int, str]:
        app.batcher.start()
        try:
            answer = await app.invocations(model, body, ctype, "r")
        finally:
            await app.batcher.stop()
        return answer.status, answer.body

    return asyncio.run(run())


@pytest.mark.parametrize("label", OVERSIZED)
def test_oversized_requests_get_413_before_any_frame(label: str, small_model: LoadedModel,
                                                     tripwires: list[str]) -> None:
    body, ctype, message = OVERSIZED[label]
    assert len(body) < 16 * 1024**2, "within the body limit: the row and size limits must catch it"
    status, text = score(small_model, body, ctype, **({"max_decoded_bytes": 64 * 1024**2} if "allowed" in label else {}))
    assert status == 413, (label, text[:300])
    error = json.loads(text)
    assert error["error_code"] == "RESOURCE_EXHAUSTED" and message in error["message"], error
    assert not tripwires


WITHIN = {
    "split": (split(100), JSON), "split with index": (split(3, index=[0, 1, 2]), JSON),
    "records": (records("dataframe_records", 100), JSON), "instances": (records("instances", 100), JSON),
    "csv": (csv(100), CSV), "parquet": (parquet(constant_rows(100).cast(pa.schema([
        ("x0", pa.float64()), ("x1", pa.float64()), ("x2", pa.float64()), ("n", pa.int64()), ("plan", pa.string())]))),
        PARQUET),
}


@pytest.mark.parametrize("label", WITHIN)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_requests_within_the_limits_score(label: str, small_model: LoadedModel) -> None:
    body, ctype = WITHIN[label]
    status, text = score(small_model, body, ctype)
    assert status == 200, (label, text[:300])
    assert len(json.loads(text)["predictions"]) in (3, 100)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_limits_are_the_settings(small_model: LoadedModel) -> None:
    """Raising the row limit admits what the lower one refused (the bound is configurable, not fixed)."""
    body = records("dataframe_records", 150)
    assert score(small_model, body, JSON)[0] == 413
    status, text = score(small_model, body, JSON, max_request_rows=200)
    assert status == 200 and len(json.loads(text)["predictions"]) == 150


def test_decoded_estimates_are_held_on_the_admission_ticket() -> None:
    admission = Admission(max_requests=4, max_bytes=10 * 1024**2)
    limits = RequestLimits(max_rows=10_000, max_decoded_bytes=8 * 1024**2)
    with admission.ticket() as ticket:
        limits.bound(ticket).json_payload(records("dataframe_records", 1000))
        assert admission.bytes_in_flight == ticket.decoded > 1000 * 5 * 8
    assert admission.bytes_in_flight == 0


def test_arrow_size_counts_dictionaries_decoded() -> None:
    repeated = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1000, dtype=np.int32)), pa.array(["x" * 1000]))
    assert arrow_bytes(repeated) >= 1000 * 1000
    assert repeated.nbytes < 10_000  # what Arrow itself holds: the reason to count this way
    nested = pa.array([["abc"] * 10] * 10)
    assert arrow_bytes(nested) >= 300


def test_json_structure_is_refused_while_the_body_arrives(small_model: LoadedModel) -> None:
    """The estimate runs chunk by chunk: a 12 MB index bomb is refused before most of it is read."""
    app = serving_app()  # production limits
    app.holder.current = small_model
    body = split(1, index=list(range(1_500_000)))
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    read: list[int] = []
    sent: list[dict] = []

    async def receive() -> dict:
        read.append(1)
        return {"type": "http.request", "body": chunks[len(read) - 1], "more_body": len(read) < len(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/invocations", "client": ("10.0.0.1", 1),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and "the JSON body decodes to about" in json.loads(sent[1]["body"])["message"]
    assert len(read) < 0.8 * len(chunks), (len(read), len(chunks))
