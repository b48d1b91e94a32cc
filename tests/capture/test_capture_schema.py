"""Capture's table: one Arrow schema per endpoint from the model signature, hostile values normalised."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tests.monitoring.memory_s3 import MemoryS3
from tests.serving.helpers import small_frame
from workloads.capture.schema import CaptureSchema
from workloads.capture.table import Record, records_to_table
from workloads.capture.writer import CaptureWriter
from workloads.environment import Environment, StackOutputs
from workloads.settings import ServeSettings

TS = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


@pytest.fixture(scope="module")
def model() -> SimpleNamespace:
    """What the serving ModelHolder hands to `on_swap`: a name, a version and the pyfunc's signature."""
    from mlflow.models import infer_signature

    frame = small_frame(20, 0)
    signature = infer_signature(frame, np.zeros((20, 2)))  # x0-x2 double, n long, plan string; probabilities
    metadata = SimpleNamespace(get_input_schema=lambda: signature.inputs, get_output_schema=lambda: signature.outputs)
    return SimpleNamespace(name="m", version="7", pyfunc=SimpleNamespace(metadata=metadata))


def _variants() -> list[tuple[pd.DataFrame, np.ndarray]]:
    """Seven batches MLflow lets through for one signature, each inferring a different Arrow schema."""
    base = small_frame(4, 1)
    ints = base.assign(x0=[1, 2, 3, 4])  # ints in a double column
    gaps = base.assign(n=[1.0, np.nan, 3.0, 4.0])  # a missing long: the column turns float
    empty = base.assign(plan=pd.Series([None] * 4, dtype=object))  # all null: Arrow's null type
    numbers = base.assign(plan=[1, 2, 3, 4])  # numbers in a string column
    extra = base.assign(extra=["a", "b", "c", "d"])  # a column the signature does not have
    probabilities = np.full((4, 2), 0.5)
    return [(base, probabilities), (ints, probabilities), (gaps, probabilities), (empty, probabilities),
            (numbers, probabilities), (extra, probabilities), (base, np.array([0, 1, 1, 0]))]  # ints predicted


def _flushed_schemas(writer: CaptureWriter, s3: MemoryS3) -> list[pa.Schema]:
    schemas = []
    for i, (frame, predictions) in enumerate(_variants()):
        assert writer.record(f"r{i}", "m", "7", frame, predictions, ts=TS)
        assert writer.flush() == len(frame)  # one file per batch
    for key, body in s3.objects.items():
        if key.endswith(".parquet"):
            schemas.append(pq.read_schema(io.BytesIO(body)))
    return schemas


def test_seven_inferred_schemas_become_the_signatures_one(model) -> None:
    inferred = MemoryS3()
    _flushed_schemas(CaptureWriter(inferred, "b", "e"), inferred)  # no signature known: types inferred
    distinct = {str(s) for s in (pq.read_schema(io.BytesIO(b)) for b in inferred.objects.values())}
    assert len(distinct) == 7, "the variants must reproduce the 7 schemas of issue 14"

    s3 = MemoryS3()
    writer = CaptureWriter(s3, "b", "e")
    writer.on_swap(None, model)
    schemas = _flushed_schemas(writer, s3)
    assert len(schemas) == 7 and len({str(s.remove_metadata()) for s in schemas}) == 1
    names = [f.name for f in schemas[0]]
    assert names == ["x0", "x1", "x2", "n", "plan", "_request_id", "_row", "_ts", "_model_name", "_model_version",
                     "_prediction", "_coerced", "_shadow_version", "_shadow_prediction"]
    types = {f.name: f.type for f in schemas[0]}
    assert types["x0"] == pa.float64() and types["n"] == pa.int64() and types["plan"] == pa.large_string()
    assert types["_prediction"] == pa.float64() and types["_coerced"] == pa.bool_()


def test_values_that_do_not_fit_are_null_and_flagged_missing_ones_are_not(model) -> None:
    schema = CaptureSchema.of(model.pyfunc.metadata.get_input_schema(), model.pyfunc.metadata.get_output_schema())
    frame = pd.DataFrame({"x0": pd.Series([1, "abc", None, 2.5], dtype=object), "x1": [1.0] * 4, "x2": [0.0] * 4,
                          "n": pd.Series([1, 1.5, None, 2**70], dtype=object),
                          "plan": pd.Series(["pro", 3, None, "basic"], dtype=object)})
    table = records_to_table([Record(["a"], [4], TS, "m", "7", frame, np.zeros(4))], schema).to_pandas()
    assert table["x0"][0] == 1.0 and np.isnan(table["x0"][1]) and table["x0"][3] == 2.5
    assert table["n"].isna().tolist() == [False, True, True, True]  # 1.5 and 2**70 do not fit a long
    assert table["plan"].tolist()[:2] == ["pro", "3"] and table["plan"].isna().tolist()[2]
    # row 0 fits; row 1: "abc" in a double, 1.5 in a long, 3 in a string; row 2 only missing; row 3: 2**70
    assert table["_coerced"].tolist() == [False, True, False, True]


def test_hostile_values_are_capped_and_normalised(model) -> None:
    s3 = MemoryS3()
    writer = CaptureWriter(s3, "b", "e")
    writer.on_swap(None, model)
    huge = "\x00" + "a" * 1_000_000
    frame = pd.DataFrame({"x0": [1e30, 1.0, 2.0], "x1": [np.inf, -np.inf, 0.5], "x2": [0.0, np.nan, 1.0],
                          "n": [1, 2, 3], "plan": pd.Series([huge, "p\x00ro", "bad \ud800 utf-8"], dtype=object)})
    assert writer.record("r" * 100_000 + "\x00", "m", "7", frame, np.array([[0.1, 0.9], [np.inf, np.nan], [0, 1]]),
                         ts=TS)
    assert writer.flush() == 3 and writer.stats.records_dropped == 0
    (body,) = s3.objects.values()
    assert len(body) < 50_000  # the 1M-character string is not in the file
    table = pd.read_parquet(io.BytesIO(body))
    assert table["plan"].str.len().max() <= 1024 and not table["plan"].str.contains("\x00").any()
    assert table["plan"][1] == "pro" and table["plan"][2] == "bad ? utf-8"
    assert table["x0"][0] == 1e30  # large but finite: kept, it is what was scored
    assert table["x1"].isna().tolist() == [True, True, False]  # infinities: null
    assert table["x2"].isna().tolist() == [False, True, False]  # NaN: missing, as sent
    assert table["_prediction"].isna().tolist() == [False, True, False]
    assert table["_request_id"].str.len().max() == 1024 and not table["_request_id"].str.contains("\x00").any()
    assert table["_coerced"].tolist() == [True, True, True]


def test_the_string_cap_is_a_serve_setting_with_bounds(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        ServeSettings(model="m", capture_max_string_chars=0)
    from workloads.serving.app import ServingApp

    outputs = StackOutputs(environment="t", tracking_uri="http://127.0.0.1:9", data_bucket="d",
                           artifact_bucket="a", capture_bucket="c")
    app = ServingApp(ServeSettings(model="m", capture_max_string_chars=16), Environment(outputs, tmp_path))
    assert app.capture is not None and app.capture.max_string_chars == 16
    assert app.capture.on_swap in app.holder.on_swap  # the served version's signature reaches capture
    frame = small_frame(2, 0).assign(plan=["x" * 100, "short"])
    table = records_to_table([Record(["a"], [2], TS, "m", "1", frame, np.zeros(2))], None, 16)
    assert table.column("plan").to_pylist() == ["x" * 16, "short"]
