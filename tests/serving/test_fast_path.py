"""The serving fast path in process: parsing, batch prediction, fallback, response bytes, batch capture."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

import workloads  # noqa: F401 - telemetry off before mlflow is imported
from tests.serving.helpers import SMALL_NAMES, SMALL_NUMERIC, small_frame
from workloads.capture.table import records_to_table
from workloads.capture.writer import CaptureWriter
from workloads.layout import capture_prefix
from workloads.serving.batching import Item, predict_fast
from workloads.serving.fast_path import Fallback, FastInput, FastSchema
from workloads.serving.model import LoadedModel
from workloads.serving.protocol import fast_predictions_json, predictions_json


def bodies(frame: pd.DataFrame) -> dict[str, bytes]:
    """The same rows in each of the four JSON shapes the fast path takes."""
    shapes = {
        "dataframe_split": frame.to_dict(orient="split", index=False),
        "dataframe_records": frame.to_dict(orient="records"),
        "instances": frame.to_dict(orient="records"),
        "inputs": frame.to_dict(orient="list"),
    }
    return {k: json.dumps({k: v}).encode() for k, v in shapes.items()}


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
def test_schema_of_signature(small_model):
    assert small_model.fast == FastSchema(tuple(SMALL_NAMES), (frozenset({float, int}),) * 3 + (frozenset({int}),
                                                                                     frozenset({str})))


def test_schema_declines_columns_it_cannot_check():
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    assert FastSchema.of(None) is None
    assert FastSchema.of(Schema([ColSpec(DataType.double, "a"), ColSpec(DataType.datetime, "t")])) is None
    assert FastSchema.of(Schema([ColSpec(Array(DataType.double), "a")])) is None
    assert FastSchema.of(Schema([ColSpec(DataType.double)])) is None  # unnamed
    assert FastSchema.of(Schema([TensorSpec(np.dtype("float64"), (-1, 3))])) is None


def test_all_shapes_parse_to_the_same_columns(small_model):
    frame = small_frame(3, 1)
    parsed = {k: small_model.fast.parse(b) for k, b in bodies(frame).items()}
    expected = [frame[c].tolist() for c in SMALL_NAMES]
    for shape, got in parsed.items():
        assert got is not None, shape
        assert got.rows == 3 and got.columns == expected, shape


ROW = {"x0": 0.5, "x1": -1.0, "x2": 2, "n": 3, "plan": "pro"}

UNUSUAL = {
    "params": {"dataframe_records": [ROW], "params": {"a": 1}},
    "extra key": {"dataframe_records": [ROW], "other": 1},
    "split with index": {"dataframe_split": {"columns": SMALL_NAMES, "data": [list(ROW.values())], "index": [0]}},
    "split, other column order": {"dataframe_split": {"columns": SMALL_NAMES[::-1], "data": [list(ROW.values())[::-1]]}},
    "split, ragged row": {"dataframe_split": {"columns": SMALL_NAMES, "data": [list(ROW.values())[:-1]]}},
    "split, no rows": {"dataframe_split": {"columns": SMALL_NAMES, "data": []}},
    "records, missing column": {"dataframe_records": [{k: v for k, v in ROW.items() if k != "x1"}]},
    "records, extra column": {"dataframe_records": [{**ROW, "z": 1}]},
    "records, none": {"dataframe_records": []},
    "bool for a double": {"dataframe_records": [{**ROW, "x0": True}]},
    "float for a long": {"dataframe_records": [{**ROW, "n": 3.0}]},
    "null value": {"dataframe_records": [{**ROW, "x0": None}]},
    "number for a string": {"dataframe_records": [{**ROW, "plan": 1}]},
    "nested value": {"inputs": {**{k: [v] for k, v in ROW.items()}, "x0": [[1.0]]}},
    "inputs, unequal lengths": {"inputs": {**{k: [v] for k, v in ROW.items()}, "x0": [1.0, 2.0]}},
    "inputs, scalars": {"inputs": ROW},
    "inputs, list of lists": {"inputs": [list(ROW.values())]},
}


@pytest.mark.parametrize("label", list(UNUSUAL))
def test_unusual_requests_are_left_to_mlflow(small_model, label):
    assert small_model.fast.parse(json.dumps(UNUSUAL[label]).encode()) is None


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b'"x"', b"\xff\xfe", b'{"dataframe_records": [1]}',
                                  b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"])  # json.loads recursion
def test_unparseable_bodies_are_left_to_mlflow(small_model, body):
    assert small_model.fast.parse(body) is None


def test_type_check_accepts_what_it_promises(small_model):
    assert small_model.fast.parse(json.dumps({"dataframe_records": [ROW]}).encode()) is not None  # int for a double


def _items(model: LoadedModel, inputs: list[FastInput]) -> list[Item]:
    return [Item(model, d, None, d.rows, future=None, request_id=f"r{i}") for i, d in enumerate(inputs)]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def record_batch(self, *args, shadow=None) -> bool:
        self.calls.append(args)
        return True


def test_one_batch_of_mixed_shapes_predicts_like_the_model_in_process(small_model):
    frame = small_frame(40, 2)
    inputs, start = [], 0
    shapes = list(bodies(frame.iloc[:1]))
    for i, n in enumerate([1, 3, 1, 2, 5, 1, 4]):
        shape = shapes[i % len(shapes)]
        inputs.append(small_model.fast.parse(bodies(frame.iloc[start:start + n])[shape]))
        start += n
    recorder = _Recorder()
    results, scored = predict_fast(_items(small_model, inputs))
    for s in scored:
        s.record(recorder)
    expected = np.asarray(small_model.pyfunc.predict(frame.iloc[:start]))
    got = np.concatenate([value for ok, value in results])
    assert all(ok for ok, _ in results)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # Captured once for the whole batch: ids and sizes in order, the frame the model saw.
    ((ids, sizes, name, version, captured, output),) = recorder.calls
    assert ids == [f"r{i}" for i in range(7)] and sizes == [1, 3, 1, 2, 5, 1, 4]
    assert (name, version) == ("m", "1") and len(captured) == start and list(captured.columns) == SMALL_NAMES
    np.testing.assert_array_equal(captured[SMALL_NUMERIC].to_numpy(), frame.iloc[:start][SMALL_NUMERIC].to_numpy())


def test_a_failing_batch_falls_back_whole_and_captures_nothing(small_model):
    good = small_model.fast.parse(bodies(small_frame(2, 3))["dataframe_split"])
    # NaN is a float, so it passes the cheap check; the model then raises on it.
    poison = small_model.fast.parse(b'{"dataframe_records": [{"x0": NaN, "x1": 1.0, "x2": 1.0, "n": 1, "plan": "pro"}]}')
    assert poison is not None
    recorder = _Recorder()
    results, scored = predict_fast(_items(small_model, [good, poison, good]))
    for s in scored:
        s.record(recorder)
    assert [ok for ok, _ in results] == [False] * 3
    assert all(isinstance(value, Fallback) for _, value in results)
    assert recorder.calls == []


@pytest.mark.parametrize("predictions", [
    np.array([[0.1, 0.9], [1 / 3, 2 / 3]]), np.array([1e-300, -0.0, np.nan, np.inf, 123456789.123456789]),
    np.array([0, 1, 1]), np.array([True, False]), np.array([1.5], dtype=np.float32),
])
def test_hand_built_json_is_byte_identical_to_mlflow(predictions):
    assert fast_predictions_json(predictions) == predictions_json(predictions, False)


@pytest.mark.parametrize("predictions", [pd.DataFrame({"a": [1.0]}), np.array(["a"]), [1.0]])
def test_hand_built_json_leaves_other_outputs_to_mlflow(predictions):
    assert fast_predictions_json(predictions) is None


def test_batch_capture_record_numbers_rows_per_request():
    writer = CaptureWriter(s3=None, bucket="b", endpoint="e")
    frame = small_frame(6, 4)
    ts = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert writer.record_batch(["a", "b", "c"], [2, 1, 3], "m", "7", frame, np.arange(6) / 10, ts=ts)
    assert writer.record("d", "m", "7", frame.iloc[:1], np.array([0.5]), ts=ts)
    assert not writer.record_batch(["x"], [2], "m", "7", frame, np.arange(6))  # sizes don't add up: refused
    table = records_to_table(writer._buffer).to_pandas()
    assert list(table["_request_id"]) == ["a", "a", "b", "c", "c", "c", "d"]
    assert list(table["_row"]) == [0, 1, 0, 0, 1, 2, 0]
    assert list(table["_prediction"]) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    assert writer.stats.buffered_rows == 7 and writer.stats.records_dropped == 6  # its input rows


class _MemoryS3:
    """Just enough of an S3 client for CaptureWriter.flush: keeps what was put."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803 - boto3's names
        self.objects[Key] = Body


def test_odd_values_in_a_string_column_cost_no_other_request_its_capture():
    """MLflow's schema lets 1.5, null, true or 10**22 into a string column; every row is still written."""
    import io

    s3 = _MemoryS3()
    writer = CaptureWriter(s3=s3, bucket="b", endpoint="e")
    ts = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    odd = ["pro", 1.5, None, True, 10**22, "basic"]
    for i, value in enumerate(odd):
        frame = small_frame(1, i)
        frame["plan"] = pd.Series([value], dtype=object)
        assert writer.record(f"r{i}", "m", "7", frame, np.array([i / 10]), ts=ts)
    assert writer.flush() == len(odd)
    assert writer.stats.records_dropped == 0 and writer.stats.buffered_rows == 0
    ((key, body),) = s3.objects.items()
    assert key.startswith(capture_prefix("e") + "dt=2026-01-02/hour=03/") and key.endswith(".parquet")
    table = pd.read_parquet(io.BytesIO(body))
    assert list(table["_request_id"]) == [f"r{i}" for i in range(len(odd))]
    assert list(table["plan"].iloc[[0, 1, 3, 4, 5]]) == ["pro", "1.5", "True", str(10**22), "basic"]
    assert pd.isna(table["plan"].iloc[2])
    assert list(table["_prediction"]) == [i / 10 for i in range(len(odd))]
