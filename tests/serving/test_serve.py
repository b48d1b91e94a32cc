"""Serving against real servers: the session's local stack, `mlops serve` subprocesses on free ports."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time
import uuid

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.serving.helpers import Endpoint, free_port, private_store, read_captures, start_moto
from workloads.environment import Environment

pytestmark = pytest.mark.servers

NUMERIC = [f"x{i:02d}" for i in range(20)]
FEATURES = NUMERIC + ["plan"]


def make_data(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, len(NUMERIC))), columns=NUMERIC)
    frame["plan"] = rng.choice(["basic", "plus", "pro"], size=n).astype(object)
    return frame


def register(env: Environment, name: str, c: float, seed: int) -> str:
    """Log and register a scaler + one-hot + logistic-regression pipeline; returns its version."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X = make_data(400, seed)
    y = ((X["x00"] + 0.5 * X["x01"] + (X["plan"] == "pro")) > 0.3).astype(int)
    pipe = Pipeline([
        ("prep", ColumnTransformer([("num", StandardScaler(), NUMERIC),
                                    ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"])])),
        ("clf", LogisticRegression(C=c)),
    ]).fit(X, y)
    with env.tracking():
        mlflow.set_experiment("serving-tests")
        with mlflow.start_run():
            # predict_proba: continuous outputs, so any row mix-up in batching would show.
            info = mlflow.sklearn.log_model(pipe, name="model", signature=infer_signature(X, pipe.predict_proba(X)),
                                            registered_model_name=name, pyfunc_predict_fn="predict_proba")
    return str(info.registered_model_version)


def set_alias(env: Environment, name: str, version: str) -> None:
    env.mlflow_client().set_registered_model_alias(name, "champion", version)


# --- payloads: every format the scoring protocol accepts ----------------------------------------


def payload(fmt: str, frame: pd.DataFrame) -> tuple[bytes, str]:
    if fmt == "csv":
        return frame.to_csv(index=False).encode(), "text/csv"
    # json.dumps of Python floats round-trips exactly (pandas' to_json keeps 10 digits only).
    if fmt == "dataframe_split":
        body = {"dataframe_split": frame.to_dict(orient="split", index=False)}
    elif fmt == "dataframe_records":
        body = {"dataframe_records": frame.to_dict(orient="records")}
    elif fmt == "instances":
        body = {"instances": frame.to_dict(orient="records")}
    else:  # inputs: column-major dict
        body = {"inputs": frame.to_dict(orient="list")}
    return json.dumps(body).encode(), "application/json"


FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs", "csv"]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(local_stack, local_workdir) -> Environment:
    """The session's local stack, passed explicitly (nothing here relies on process-wide MLflow settings)."""
    return Environment(local_stack, local_workdir)


@pytest.fixture(scope="module")
def model_name(local_stack) -> str:
    return f"serve-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def bootstrapped(env, local_workdir, model_name, tmp_path_factory):
    """An endpoint started before its model exists: what it said then, and the endpoint once served."""
    logs = tmp_path_factory.mktemp("serve-logs")
    ep = Endpoint(model_name, local_workdir, "--capture-flush-seconds", "0.5", log=logs / "batched.log")
    try:  # stop the server we started even when the setup below fails
        before = {
            "ping": ep.client.get("/ping"),
            "health": ep.client.get("/health"),
            "invocations": ep.client.post("/invocations", content=payload("dataframe_split", make_data(1, 0))[0],
                                          headers={"Content-Type": "application/json"}),
            "version": ep.client.get("/version").json(),
        }
        v1 = register(env, model_name, c=1.0, seed=1)
        set_alias(env, model_name, v1)
        ep.wait_ready()  # the poll picks the alias up: no restart
        yield ep, before, v1
    finally:
        ep.stop()


@pytest.fixture(scope="module")
def unbatched(bootstrapped, local_workdir, model_name, tmp_path_factory):
    ep = Endpoint(model_name, local_workdir, "--max-batch-rows", "1", "--no-capture",
                  log=tmp_path_factory.mktemp("serve-logs") / "unbatched.log")
    try:
        ep.wait_ready()
        yield ep
    finally:
        ep.stop()


def load(env: Environment, model_name: str, version: str):
    import mlflow.pyfunc

    with env.tracking():
        return mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")


def in_process(env: Environment, model_name: str, version: str, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(load(env, model_name, version).predict(frame))


# --- tests ---------------------------------------------------------------------------------------


def test_bootstrap_not_ready_then_serves_without_restart(bootstrapped):
    ep, before, v1 = bootstrapped
    assert before["ping"].status_code == 503
    assert before["health"].status_code == 200
    assert before["invocations"].status_code == 503
    assert "not loaded yet" in before["invocations"].json()["message"]
    assert before["version"]["ready"] is False and before["version"]["version"] is None
    pid = ep.proc.pid
    r = ep.client.post("/invocations", content=payload("dataframe_split", make_data(2, 3))[0],
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Model-Version"] == v1
    assert ep.proc.pid == pid and ep.proc.poll() is None


def test_version_reports_registered_version(bootstrapped, env, model_name):
    ep, _, v1 = bootstrapped
    info = ep.client.get("/version").json()
    mv = env.mlflow_client().get_model_version_by_alias(model_name, "champion")
    assert info["model"] == model_name and info["alias"] == "champion"
    assert info["version"] == v1 == str(mv.version) and info["run_id"] == mv.run_id
    assert info["mlflow_version"]
    assert ep.metric(f'mlops_model_version_info{{alias="champion",model="{model_name}",version="{v1}",'
                     f'mlops_endpoint="{model_name}"}}') == 1.0


@pytest.mark.parametrize("which", ["batched", "unbatched"])
def test_all_formats_match_in_process_under_concurrency(which, bootstrapped, unbatched, env, model_name):
    ep, _, v1 = bootstrapped
    ep = ep if which == "batched" else unbatched
    data = make_data(600, seed=7)
    expected = in_process(env, model_name, v1, data)
    rng = np.random.default_rng(11)
    jobs = []
    start = 0
    for i in range(200):
        n = int(rng.integers(1, 4))
        jobs.append((FORMATS[i % len(FORMATS)], start, n))
        start += n

    def call(job):
        fmt, s, n = job
        body, ctype = payload(fmt, data.iloc[s:s + n])
        rid = f"req-{which}-{s}"
        r = ep.client.post("/invocations", content=body, headers={"Content-Type": ctype, "X-Request-Id": rid})
        return job, rid, r

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    for (fmt, s, n), rid, r in results:
        assert r.status_code == 200, (fmt, r.text)
        assert r.headers["X-Client-Request-Id"] == rid and r.headers["X-Request-Id"] != rid  # the server assigns ids
        assert r.headers["X-Model-Version"] == v1
        got = np.asarray(r.json()["predictions"])
        np.testing.assert_allclose(got, expected[s:s + n], rtol=0, atol=1e-12, err_msg=fmt)
    # The JSON shapes took the fast path, CSV MLflow's per-request path.
    assert ep.metric('mlops_serving_path_requests_total{path="fast"}') >= 160
    assert ep.metric('mlops_serving_path_requests_total{path="mlflow"}') >= 40
    if which == "batched":
        # Concurrency made some predict calls carry more than one request.
        text = ep.client.get("/metrics").text
        counts = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line.startswith("mlops_serving_batch_requests_bucket")}
        assert counts["1.0"] < counts["+Inf"], counts


def test_response_bytes_match_mlflow(bootstrapped, env, model_name):
    """Same body bytes as mlflow's scoring server writes for the same input."""
    from mlflow.pyfunc import scoring_server

    ep, _, v1 = bootstrapped
    frame = make_data(3, seed=5)
    body, ctype = payload("dataframe_split", frame)
    stock = scoring_server.invocations(body, ctype, load(env, model_name, v1), None)
    ours = ep.client.post("/invocations", content=body, headers={"Content-Type": ctype})
    assert ours.text == stock.response


BAD = [
    ("malformed json", b'{"dataframe_split": {', "application/json", 400),
    ("empty json body", b"", "application/json", 400),
    ("empty csv body", b"", "text/csv", 400),
    ("json list", b"[1, 2]", "application/json", 400),
    ("no format key", b'{"data": [[1]]}', "application/json", 400),
    ("two format keys", b'{"instances": [], "inputs": []}', "application/json", 400),
    ("wrong columns", json.dumps({"dataframe_records": [{"nope": 1}]}).encode(), "application/json", 400),
    ("wrong types", json.dumps({"dataframe_records": [{**{c: "abc" for c in NUMERIC}, "plan": "pro"}]}).encode(),
     "application/json", 400),
    ("nested garbage", json.dumps({"inputs": {"x00": [[[[1]]]]}}).encode(), "application/json", 400),
    ("nested too deep for json", b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", 400),
    ("not utf-8", b"\xff\xfe\xfa", "text/csv", 400),
    ("wrong content type", b"hello", "text/plain", 415),
    ("bad charset", b"{}", "application/json; charset=latin-1", 415),
    ("no content type", b"{}", None, 415),
]


def test_bad_requests_get_4xx_with_reason_and_server_stays_healthy(bootstrapped, model_name):
    ep, _, v1 = bootstrapped
    for label, body, ctype, status in BAD:
        headers = {"Content-Type": ctype} if ctype else {}
        r = ep.client.post("/invocations", content=body, headers=headers)
        assert r.status_code == status, (label, r.status_code, r.text[:500])
        assert r.text.strip(), label
        if r.headers["content-type"].startswith("application/json"):
            assert r.json()["error_code"] and r.json()["message"], label
    # Oversize: announced by Content-Length, and streamed without one.
    big = b'{"inputs": [' + b"1," * (9 * 1024 * 1024) + b"1]}"
    r = ep.client.post("/invocations", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["message"]
    r = ep.client.post("/invocations", content=iter([big[i:i + 1 << 20] for i in range(0, len(big), 1 << 20)]),
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert ep.client.get("/ping").status_code == 200
    ok = ep.client.post("/invocations", content=payload("csv", make_data(2, 1))[0], headers={"Content-Type": "text/csv"})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    five_xx = [line.split("{", 1)[1] for line in ep.client.get("/metrics").text.splitlines()
               if line.startswith("mlops_serving_requests_total{") and 'status="5' in line]
    assert five_xx in ([], [f'mlops_endpoint="{model_name}",status="503"}} 1.0']), five_xx  # 503: bootstrap only


def test_failing_request_in_a_batch_fails_alone(bootstrapped, env, model_name):
    """Missing numbers pass MLflow's schema (doubles may be NaN) but make the model raise inside a batch."""
    ep, _, v1 = bootstrapped
    data = make_data(40, seed=9)
    expected = in_process(env, model_name, v1, data)
    bad = json.dumps({"dataframe_records": [{**{c: None for c in NUMERIC}, "plan": "pro"}]}).encode()

    def call(i):
        if i % 4 == 0:
            return None, ep.client.post("/invocations", content=bad, headers={"Content-Type": "application/json"})
        body, ctype = payload("dataframe_split", data.iloc[i:i + 1])
        return i, ep.client.post("/invocations", content=body, headers={"Content-Type": ctype})

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(40)))
    for i, r in results:
        if i is None:
            assert r.status_code == 400 and "unexpected error while evaluating" in r.json()["message"], r.text
        else:
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["predictions"], expected[i:i + 1], atol=1e-12)


def test_capture_n_requests_give_n_records_flushed_on_shutdown(bootstrapped, env, local_workdir,
                                                               model_name, tmp_path):
    _, _, v1 = bootstrapped
    endpoint = f"cap-{uuid.uuid4().hex[:6]}"
    # A long flush interval: only the flush on shutdown can write these.
    ep = Endpoint(model_name, local_workdir, "--endpoint-name", endpoint, "--capture-flush-seconds", "600",
                  log=tmp_path / "capture.log")
    ep.wait_ready()
    data = make_data(30, seed=4)
    with cf.ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda i: ep.client.post(
            "/invocations", content=payload("dataframe_split", data.iloc[i:i + 2])[0],
            headers={"Content-Type": "application/json", "X-Request-Id": f"cap-{i}"}), range(0, 30, 2)))
    assert all(r.status_code == 200 for r in rs)
    ids = [r.headers["x-request-id"] for r in rs]  # the server's: what capture records (request i*2 -> ids[i])
    assert read_captures(env, endpoint).empty
    assert ep.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    got = read_captures(env, endpoint)
    assert len(got) == 30 and got["_request_id"].nunique() == 15
    assert set(got.columns) >= set(FEATURES) | {"_request_id", "_row", "_ts", "_model_name", "_model_version",
                                               "_prediction"}
    assert (got["_model_version"] == v1).all() and (got["_model_name"] == model_name).all()
    assert str(got["_ts"].dtype).startswith("datetime64") and str(got["_ts"].dt.tz) == "UTC"
    got = got.sort_values(["_request_id", "_row"])
    first = got[got["_request_id"] == ids[2]]
    np.testing.assert_allclose(first[NUMERIC].to_numpy(), data.iloc[4:6][NUMERIC].to_numpy())
    assert list(first["_row"]) == [0, 1]


def test_capture_survives_s3_outage_and_resumes(bootstrapped, env, model_name, tmp_path):
    port = free_port()
    moto = start_moto(port, tmp_path / "moto.log")
    ep = None
    try:
        outage = private_store(env, port, "outage-capture", tmp_path / "wd")
        ep = Endpoint(model_name, outage.workdir, "--endpoint-name", "outage", "--capture-flush-seconds", "0.3",
                      "--capture-max-buffer-rows", "20", log=tmp_path / "serve.log")
        ep.wait_ready()
        ids: dict[int, str] = {}  # request -> the server's id (what capture records)

        def post(i: int) -> httpx.Response:
            r = ep.client.post("/invocations", content=payload("dataframe_split", make_data(1, i))[0],
                               headers={"Content-Type": "application/json", "X-Request-Id": f"o-{i}"})
            ids[i] = r.headers["x-request-id"]
            return r

        assert all(post(i).status_code == 200 for i in range(5))
        deadline = time.monotonic() + 10
        while ep.metric("mlops_capture_records_written_total") < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ep.metric("mlops_capture_records_written_total") == 5

        moto.terminate()
        moto.wait(10)
        assert all(post(i).status_code == 200 for i in range(5, 55))  # 50 requests, buffer holds 20
        deadline = time.monotonic() + 10
        while ep.metric("mlops_capture_flush_errors_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ep.metric("mlops_capture_flush_errors_total") > 0
        assert ep.metric("mlops_capture_records_dropped_total") == 30
        assert ep.client.get("/ping").status_code == 200

        moto = start_moto(port, tmp_path / "moto.log")  # same port, empty store
        outage.s3.create_bucket(Bucket="outage-capture")
        deadline = time.monotonic() + 15
        while ep.metric("mlops_capture_records_written_total") < 25 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ep.metric("mlops_capture_records_written_total") == 25
        assert ep.metric("mlops_capture_buffered_rows") == 0
        got = read_captures(outage, "outage")
        assert len(got) == 20 and set(got["_request_id"]) == {ids[i] for i in range(5, 25)}
    finally:
        if ep is not None:
            ep.stop()
        moto.terminate()
        moto.wait(10)


def test_reload_switches_version_with_requests_in_flight(bootstrapped, env, model_name):
    ep, _, v1 = bootstrapped
    v2 = register(env, model_name, c=0.01, seed=2)
    data = make_data(1, seed=8)
    body, ctype = payload("dataframe_split", data)
    expected = {v1: in_process(env, model_name, v1, data), v2: in_process(env, model_name, v2, data)}
    assert not np.allclose(expected[v1], expected[v2])
    stop = time.monotonic() + 4

    def hammer(_):
        seen = []
        while time.monotonic() < stop:
            r = ep.client.post("/invocations", content=body, headers={"Content-Type": ctype})
            assert r.status_code == 200, r.text
            version = r.headers["X-Model-Version"]
            np.testing.assert_allclose(r.json()["predictions"], expected[version], atol=1e-12)
            seen.append(version)
        return seen

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(hammer, i) for i in range(6)]
        time.sleep(1)
        set_alias(env, model_name, v2)
        r = ep.client.post("/reload")
        assert r.status_code == 200 and r.json()["version"] == v2 and r.json()["reloaded"] is True
        seen = [v for f in futures for v in f.result()]
    assert v1 in seen and v2 in seen and seen.count(v2) > 10
    assert ep.client.get("/version").json()["version"] == v2

    # SIGHUP does the same.
    set_alias(env, model_name, v1)
    ep.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while ep.client.get("/version").json()["version"] != v1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ep.client.get("/version").json()["version"] == v1
    assert ep.proc.poll() is None
