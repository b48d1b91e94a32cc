"""The stack outputs resolver: --stack (Pulumi CLI), the local outputs file, environment variables."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workloads.cli import app
from workloads.environment import Environment, StackError, StackOutputs, from_env, resolve

OUTPUTS = {
    "environment": "local",
    "tracking_uri": "http://127.0.0.1:5999",
    "tracking_url": "http://127.0.0.1:5999",
    "data_bucket": "mlops-local-data",
    "artifact_bucket": "mlops-local-artifacts",
    "capture_bucket": "mlops-local-capture",
    "s3_endpoint": "http://127.0.0.1:5998",
    "namespace": None,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLOPS_*/MLFLOW_*/AWS_* leaking in from the session's local stack or the shell."""
    for name in list(os.environ):
        if name.startswith(("MLOPS_", "MLFLOW_TRACKING", "MLFLOW_S3", "AWS_")):
            monkeypatch.delenv(name)


def _write_outputs(workdir: Path, values: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "outputs.json"
    path.write_text(json.dumps(values))
    return path


def test_resolves_the_local_outputs_file(tmp_path: Path) -> None:
    _write_outputs(tmp_path, OUTPUTS)
    assert resolve(workdir=tmp_path) == StackOutputs(**OUTPUTS)


def test_workdir_comes_from_mlops_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_outputs(tmp_path, {**OUTPUTS, "tracking_uri": "http://127.0.0.1:1234"})
    monkeypatch.setenv("MLOPS_WORKDIR", str(tmp_path))
    assert resolve().tracking_uri == "http://127.0.0.1:1234"


def test_resolves_environment_variables_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "dev")
    monkeypatch.setenv("MLOPS_DATA_BUCKET", "d")
    monkeypatch.setenv("MLOPS_ARTIFACT_BUCKET", "a")
    monkeypatch.setenv("MLOPS_CAPTURE_BUCKET", "c")
    monkeypatch.setenv("MLOPS_SERVING_ENDPOINTS", json.dumps({"churn": "http://churn.svc"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.svc:5000")
    outputs = resolve(workdir=tmp_path / "absent")
    assert (outputs.environment, outputs.data_bucket, outputs.tracking_uri) == ("dev", "d", "http://mlflow.svc:5000")
    assert outputs.serving_endpoints == {"churn": "http://churn.svc"}
    assert outputs.s3_endpoint is None


def test_file_wins_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_outputs(tmp_path, OUTPUTS)
    monkeypatch.setenv("MLOPS_DATA_BUCKET", "from-env")
    assert resolve(workdir=tmp_path).data_bucket == "mlops-local-data"


def test_nothing_found_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"--stack NAME.*mlops local up.*MLOPS_DATA_BUCKET"):
        resolve(workdir=tmp_path)


def test_incomplete_environment_names_the_missing_fields() -> None:
    with pytest.raises(StackError, match="environment.*tracking_uri"):
        from_env({"MLOPS_DATA_BUCKET": "d", "MLOPS_ARTIFACT_BUCKET": "a", "MLOPS_CAPTURE_BUCKET": "c"})


def test_broken_outputs_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "outputs.json").write_text("{not json")
    with pytest.raises(StackError, match="not valid JSON"):
        resolve(workdir=tmp_path)
    _write_outputs(tmp_path, {k: v for k, v in OUTPUTS.items() if k != "capture_bucket"})
    with pytest.raises(StackError, match="capture_bucket"):
        resolve(workdir=tmp_path)


def test_stack_without_pulumi_cli_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `pulumi` anywhere
    with pytest.raises(StackError, match="Pulumi CLI is not installed"):
        resolve(stack="dev")


def _fake_pulumi(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    exe = bin_dir / "pulumi"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_stack_reads_pulumi_stack_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the Pulumi CLI that checks the arguments it is given.
    values = {**OUTPUTS, "environment": "dev", "kms_key_arn": "arn:aws:kms:x", "extra_output": 1}
    _fake_pulumi(tmp_path / "bin", f"""
[ "$*" = "stack output --json --show-secrets -s dev" ] || {{ echo "bad args: $*" >&2; exit 3; }}
echo '{json.dumps(values)}'""")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    outputs = resolve(stack="dev", workdir=tmp_path)
    assert (outputs.environment, outputs.kms_key_arn) == ("dev", "arn:aws:kms:x")


def test_stack_pulumi_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pulumi(tmp_path / "bin", "echo 'error: no stack named dev found' >&2; exit 255")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(StackError, match="no stack named dev found"):
        resolve(stack="dev")


def test_environment_gives_fake_keys_only_to_a_loopback_endpoint(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # No credentials anywhere else (files, instance metadata): what the client gets is the Environment's doing.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    before = dict(os.environ)
    local = Environment(StackOutputs(**OUTPUTS))
    assert local.tracking_uri == OUTPUTS["tracking_uri"]
    assert local.s3.meta.endpoint_url == OUTPUTS["s3_endpoint"]
    assert local.s3._get_credentials().access_key == "mlops-local"
    remote = Environment(StackOutputs(**{**OUTPUTS, "s3_endpoint": "https://s3.eu-west-1.amazonaws.com"}))
    assert remote.s3._get_credentials() is None
    assert dict(os.environ) == before  # wiring is explicit: nothing written to the process environment


def test_local_status_of_a_stopped_stack(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["local", "status", "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 1  # not healthy
    state = json.loads(result.stdout)
    assert state["running"] is False
    assert {c["pid"] for c in state["components"].values()} == {None}


def test_tracking_points_mlflow_here_for_the_block_and_leaves_the_pods_variable(monkeypatch) -> None:  # noqa: ANN001
    import mlflow

    from workloads.environment import Environment, StackOutputs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://rendered:5000")
    env = Environment(StackOutputs(environment="t", tracking_uri="http://127.0.0.1:9", data_bucket="d",
                                   artifact_bucket="a", capture_bucket="c"))
    with env.tracking():
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
    assert mlflow.get_tracking_uri() == "http://rendered:5000"
    import os

    assert os.environ["MLFLOW_TRACKING_URI"] == "http://rendered:5000"
