"""One definition of "missing" on the training and serving paths (issue 14, section 4).

A model fitted the way `mlops train` fits (training's pipeline on `features.frame`) is served in
process; rows whose categories are missing, spelled `null` or `""`, sent in every request shape
and format, must get exactly the answers the model gives for the same rows as training sees them.
Before the shared definition (workloads/data/missing.py) a `null` sent as `{"inputs": {...}}`
reached the model as the category "None" and a `""` as a category of its own: both one-hot encode
to zeros instead of being imputed, and the answers differed.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import workloads  # noqa: F401 - telemetry off before mlflow is imported
from tests.serving.test_app import serving_app
from tests.serving.test_guards import run
from workloads.data import missing
from workloads.data.sample import generate
from workloads.serving.model import LoadedModel
from workloads.training import features

CATEGORIES = ["contract", "payment_method", "region", "internet_service"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, LoadedModel, list[str]]:
    """Training's pipeline fitted on training's feature frame (2% of payment_method already missing)."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from skops.io import dumps, get_untrusted_types

    from workloads.training.models import build_pipeline

    df = generate(2000, seed=1)
    chosen = [c for c in df.columns if c not in ("churned", "customer_id")]
    X = features.frame(df, chosen)
    pipe = build_pipeline(X, LogisticRegression(max_iter=2000)).fit(X, df["churned"])
    path = tmp_path_factory.mktemp("missing") / "m"
    example = X.head(5)
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")  # as training does
    mlflow.sklearn.save_model(pipe, path, signature=infer_signature(example, pipe.predict(example)),
                              serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                              skops_trusted_types=get_untrusted_types(data=dumps(pipe)),
                              pip_requirements=["scikit-learn"])  # known: no inference subprocess
    return pipe, LoadedModel.of(mlflow.pyfunc.load_model(str(path)), "m", "champion", "1"), chosen


def rows_with_gaps(chosen: list[str]) -> pd.DataFrame:
    """300 rows, a third of them with one category missing as None, NaN or "" (object columns: as a
    client's JSON decodes)."""
    rows = generate(300, seed=7)[chosen].astype({c: object for c in CATEGORIES})
    rng = np.random.default_rng(3)
    for i in rng.choice(len(rows), 100, replace=False):
        rows.loc[i, CATEGORIES[i % 4]] = (None, np.nan, "")[i % 3]
    return rows


def as_json(rows: pd.DataFrame) -> list[Any]:
    """The rows' values as a client sends them: NaN and None as `null`, "" as "" (pandas' own JSON)."""
    return json.loads(rows.to_json(orient="values"))


def bodies(rows: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    names, values = list(rows.columns), as_json(rows)
    records = [dict(zip(names, v, strict=True)) for v in values]
    columns = {n: [v[i] for v in values] for i, n in enumerate(names)}
    parquet = io.BytesIO()
    rows.to_parquet(parquet, index=False)
    as_json_body = {"dataframe_split": {"columns": names, "data": values}, "dataframe_records": records,
                    "instances": records, "inputs": columns}
    return {**{shape: (json.dumps({shape: body}).encode(), "application/json")
               for shape, body in as_json_body.items()},
            "csv": (rows.to_csv(index=False).encode(), "text/csv"),
            "parquet": (parquet.getvalue(), "application/vnd.apache.parquet")}


def served(model: LoadedModel, body: bytes, content_type: str) -> np.ndarray:
    async def talk(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/invocations", content=body, headers={"Content-Type": content_type})

    answer = run(serving_app(), model, talk)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["predictions"])


def test_missing_values_are_one_thing_on_every_path(trained: tuple[Any, LoadedModel, list[str]]) -> None:
    pipe, model, chosen = trained
    rows = rows_with_gaps(chosen)
    expected = pipe.predict(features.frame(rows, chosen))  # the rows as training sees them
    # Not vacuous: the same rows with the gaps left as they came answer differently.
    assert (pipe.predict(rows) != expected).sum() > 0
    differences = {name: int((served(model, body, kind) != expected).sum())
                   for name, (body, kind) in bodies(rows).items()}
    assert differences == dict.fromkeys(differences, 0)


def test_an_empty_category_on_the_fast_path_is_missing(trained: tuple[Any, LoadedModel, list[str]]) -> None:
    """Only strings, no `null`: the request takes the fast path, where "" must be missing too."""
    pipe, model, chosen = trained
    rows = generate(20, seed=8)[chosen].astype({c: object for c in CATEGORIES})
    rows.loc[:, "payment_method"] = ""
    rows = rows.dropna()  # no null anywhere: every value has the signature's exact type
    body = json.dumps({"dataframe_records": rows.to_dict(orient="records")}).encode()
    assert model.fast is not None and model.fast.parse(body) is not None
    np.testing.assert_array_equal(served(model, body, "application/json"), pipe.predict(features.frame(rows, chosen)))


@pytest.mark.parametrize("value", [None, np.nan, pd.NA, ""])
def test_every_spelling_of_missing_becomes_nan(value: Any) -> None:
    frame = pd.DataFrame({"c": pd.Series(["a", value], dtype=object), "s": pd.Series(["a", value], dtype="str"),
                          "x": [1.0, np.nan]})
    out = missing.normalized(frame)
    assert out["c"].iloc[1] is np.nan or (isinstance(out["c"].iloc[1], float) and np.isnan(out["c"].iloc[1]))
    assert out["s"].isna().iloc[1] and out["x"].isna().iloc[1] and out["c"].iloc[0] == "a"


@pytest.mark.parametrize("value", ["None", "null", " ", "NA"])
def test_text_that_only_looks_missing_is_a_value(value: str) -> None:
    frame = pd.DataFrame({"c": pd.Series(["a", value], dtype=object)})
    assert missing.normalized(frame) is frame  # untouched: not even copied
