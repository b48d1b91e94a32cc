"""Monitoring figures pushed to a Pushgateway (workloads/monitoring/export.py), against a local stand-in."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from workloads.monitoring import export
from workloads.monitoring.drift import DriftReport, FeatureDrift

try:  # the monitoring package is being split into modules; the result types live in result.py after it
    from workloads.monitoring.result import MonitorResult, Performance, RetrainOutcome
except ImportError:
    from workloads.monitoring.monitor import MonitorResult, Performance, RetrainOutcome  # type: ignore[no-redef]


class Gateway:
    """Records what a Pushgateway would receive; answers `status` (200 like the real one)."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, str]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                gateway.requests.append((self.command, self.path, body))
                self.send_response(status)
                self.end_headers()

            do_PUT = do_POST = _record  # noqa: N815 (http.server's method names)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


def feature(name: str, test: str, statistic: float | None, psi: float | None, drifted: bool) -> FeatureDrift:
    return FeatureDrift(name=name, kind="numeric" if test == "ks" else "categorical", test=test, n_reference=1000,
                        n_current=500, statistic=statistic, p_value=0.001, effect=statistic, psi=psi,
                        null_rate_reference=0.0, null_rate_current=0.0, drifted=drifted)


def result(**changes: object) -> MonitorResult:
    drift = DriftReport(n_reference=1000, n_current=500, n_drifted=1, drift_share=0.5, max_psi=0.31,
                        features=[feature("tenure", "ks", 0.21, 0.31, True), feature("plan", "chi2", 40.0, 0.02, False),
                                  feature("spend", "ks", None, float("nan"), False)],
                        prediction=feature("_prediction", "ks", 0.12, 0.09, False))
    base = dict(status="drift", reasons=["drift"], endpoint="churn", model_name="churn", model_version="4",
                alias="champion", window={"rows": 500}, drift_detected=True, drift=drift,
                performance=Performance(metric="roc_auc", holdout=0.81, current=0.74, drop=0.07, labelled_rows=120,
                                        decayed=True),
                performance_decayed=True,
                retraining=RetrainOutcome(triggered=True, reason="drift", version="5", decision="challenger"),
                run_id="r1", experiment="monitoring/churn", seconds=3.5)
    return MonitorResult(**{**base, **changes})


def pushed(body: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body) for s in f.samples}


def test_a_run_is_pushed_as_its_group(gateway: Gateway) -> None:
    assert export.push_run(result(), url=gateway.url, namespace="mlops-dev", completed_at=1_700_000_000.0)
    [(method, path, body)] = gateway.requests
    # PUT replaces the whole group: figures of a feature that went away go with it.
    assert method == "PUT"
    assert path == "/metrics/job/mlops-monitoring/mlops_endpoint/churn/namespace/mlops-dev"
    m = pushed(body)
    assert m[("mlops_monitoring_last_run_timestamp_seconds", ())] == 1_700_000_000.0
    assert m[("mlops_monitoring_run_duration_seconds", ())] == 3.5
    assert m[("mlops_monitoring_run_info", (("alias", "champion"), ("model", "churn"), ("model_version", "4")))] == 1
    assert m[("mlops_monitoring_status", (("status", "drift"),))] == 1
    assert m[("mlops_monitoring_drift_share", ())] == 0.5
    assert m[("mlops_monitoring_feature_psi", (("feature", "tenure"),))] == 0.31
    assert m[("mlops_monitoring_feature_psi", (("feature", "plan"),))] == 0.02
    assert m[("mlops_monitoring_feature_ks", (("feature", "tenure"),))] == 0.21
    # chi-square is not a KS distance; a NaN PSI or missing statistic is left out, not pushed as NaN.
    assert ("mlops_monitoring_feature_ks", (("feature", "plan"),)) not in m
    assert ("mlops_monitoring_feature_psi", (("feature", "spend"),)) not in m
    assert ("mlops_monitoring_feature_ks", (("feature", "spend"),)) not in m
    assert m[("mlops_monitoring_feature_drifted", (("feature", "tenure"),))] == 1
    assert m[("mlops_monitoring_prediction_psi", ())] == 0.09
    assert m[("mlops_monitoring_metric", (("metric", "roc_auc"),))] == 0.74
    assert m[("mlops_monitoring_holdout_metric", (("metric", "roc_auc"),))] == 0.81
    assert m[("mlops_monitoring_window_rows", ())] == 500
    assert m[("mlops_monitoring_retrain_triggered", ())] == 1
    assert m[("mlops_monitoring_retrain_decision", (("decision", "challenger"),))] == 1


def test_a_run_without_drift_or_labels_pushes_what_it_has(gateway: Gateway) -> None:
    assert export.push_run(result(status="insufficient_data", drift=None, performance=None, retraining=None,
                                  drift_detected=False, performance_decayed=False),
                           url=gateway.url, namespace="mlops-dev")
    names = {name for name, _ in pushed(gateway.requests[0][2])}
    assert "mlops_monitoring_last_run_timestamp_seconds" in names
    assert not names & {"mlops_monitoring_drift_share", "mlops_monitoring_metric", "mlops_monitoring_retrain_decision"}


def test_url_and_namespace_come_from_the_environment(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(export.PUSHGATEWAY_ENV, gateway.url)
    monkeypatch.setenv(export.NAMESPACE_ENV, "mlops-ci-7")
    assert export.push_run(result())
    assert gateway.requests[0][1] == "/metrics/job/mlops-monitoring/mlops_endpoint/churn/namespace/mlops-ci-7"


def test_not_configured_pushes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(export.PUSHGATEWAY_ENV, raising=False)
    assert export.push_run(result()) is False


def test_a_gateway_that_is_down_or_refuses_never_fails_the_run(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connection refused
    assert export.push_run(result(), url=closed, namespace="mlops-dev", timeout=2) is False
    refusing = Gateway(status=500)
    try:
        assert export.push_run(result(), url=refusing.url, namespace="mlops-dev") is False
    finally:
        refusing.close()
    assert "not pushed" in caplog.text
