"""Short-lived environment orchestration, with the Automation API and kubectl behind fakes.

Leak detection runs against moto's Resource Groups Tagging API (in-process `mock_aws`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from components.render import render_stack
from workloads.ci.backends import KubectlCluster
from workloads.ci.environments import (
    CREATED_TAG,
    EXPIRES_TAG,
    EnvError,
    EnvironmentInfo,
    Environments,
    find_leaks,
    parse_duration,
    smoke_payload,
    stack_config,
)
from workloads.cli import app

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class FakeBackend:
    def __init__(self, fail: set[str] = frozenset(), envs: list[EnvironmentInfo] = ()):
        self.calls: list[tuple[str, str]] = []
        self.fail = set(fail)
        self.envs = list(envs)
        self.config: dict[str, Any] = {}
        self.secret_config: dict[str, str] = {}

    def _call(self, step: str, name: str) -> None:
        self.calls.append((step, name))
        if step in self.fail:
            raise RuntimeError(f"{step} failed")

    def create(self, name, config, secret_config):
        self.config, self.secret_config = config, secret_config
        self._call("create", name)

    def up(self, name):
        self._call("up", name)
        return {"namespace": f"mlops-{name}"}

    def outputs(self, name):
        self._call("outputs", name)
        return {"namespace": f"mlops-{name}", "data_bucket": f"mlops-{name}-data", "training_jobs": {"churn": "train-churn"},
                "monitoring_cronjobs": {"churn": "monitor-churn"}}

    def destroy(self, name):
        self._call("destroy", name)

    def remove(self, name):
        self._call("remove", name)

    def environments(self):
        return self.envs


class FakeCluster:
    def __init__(self, answer: dict | None = None, leftovers: list[str] = ()):
        self.calls: list[tuple] = []
        self.answer = {"predictions": [0.2]} if answer is None else answer
        self._leftovers = list(leftovers)

    def run_job_from(self, namespace, cronjob, timeout):
        self.calls.append(("job", namespace, cronjob))

    def predict(self, namespace, service, payload):
        self.calls.append(("predict", namespace, service))
        assert payload["dataframe_split"]["data"]
        return self.answer

    def leftovers(self, namespace):
        self.calls.append(("leftovers", namespace))
        return self._leftovers


def envs(backend: FakeBackend, cluster: FakeCluster | None = None, tagging=None, s3=None) -> Environments:
    return Environments(backend=backend, cluster=cluster, tagging=tagging, s3=s3, log=lambda _: None,
                        now=lambda: NOW)


# --- create / smoke / destroy -----------------------------------------------------------

def test_create_sets_config_then_up() -> None:
    backend = FakeBackend()
    assert envs(backend).create("ci-42", timedelta(hours=3)) == {"namespace": "mlops-ci-42"}
    assert backend.calls == [("create", "ci-42"), ("up", "ci-42")]
    assert backend.config["mlops-platform:name"] == "ci-42"
    extra = backend.config["mlops-platform:tags"]["extra"]
    assert extra == {CREATED_TAG: "2025-06-01T12:00Z", EXPIRES_TAG: "2025-06-01T15:00Z"}
    assert len(backend.secret_config["trackingAdminPassword"]) >= 12
    assert not any(isinstance(v, dict) and "secure" in v for v in backend.config.values())


def test_created_config_renders_with_ttl_tags_on_every_aws_resource() -> None:
    config = stack_config("ci-42", timedelta(hours=2), NOW)
    result = render_stack("ci-42", config=config, secrets={"trackingAdminPassword": "x" * 16})
    tags = result.one("pulumi:providers:aws").inputs["defaultTags"]
    assert '"environment": "ci-42"' in tags and EXPIRES_TAG in tags and "2025-06-01T14:00Z" in tags
    assert result.outputs["namespace"] == "mlops-ci-42"


def test_failed_up_destroys_and_removes_then_reraises() -> None:
    backend = FakeBackend(fail={"up"})
    with pytest.raises(RuntimeError, match="up failed"):
        envs(backend).create("ci-7", timedelta(hours=1))
    assert backend.calls == [("create", "ci-7"), ("up", "ci-7"), ("destroy", "ci-7"), ("remove", "ci-7")]


def test_smoke_trains_predicts_then_monitors() -> None:
    cluster = FakeCluster()
    envs(FakeBackend(), cluster).smoke("ci-1")
    assert cluster.calls == [("job", "mlops-ci-1", "train-churn"), ("predict", "mlops-ci-1", "serve-churn"),
                             ("job", "mlops-ci-1", "monitor-churn")]


def test_smoke_seeds_the_training_data_first() -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        backend = FakeBackend()
        bucket = backend.outputs("ci-1")["data_bucket"]
        s3.create_bucket(Bucket=bucket)
        cluster = FakeCluster()
        envs(backend, cluster, s3=s3).smoke("ci-1")
        body = s3.get_object(Bucket=bucket, Key="incoming/churn.parquet")["Body"].read()
    assert body[:4] == b"PAR1" and cluster.calls[0] == ("job", "mlops-ci-1", "train-churn")


def test_smoke_fails_on_an_answer_without_predictions() -> None:
    cluster = FakeCluster(answer={"error_code": "BAD_REQUEST"})
    with pytest.raises(EnvError, match="without predictions"):
        envs(FakeBackend(), cluster).smoke("ci-1")
    assert ("job", "mlops-ci-1", "monitor-churn") not in cluster.calls


def test_destroy_removes_the_stack_then_checks_for_leaks() -> None:
    backend, cluster = FakeBackend(), FakeCluster(leftovers=["persistentvolumeclaim/data-postgres-0"])
    with mock_aws():
        tagging = boto3.client("resourcegroupstaggingapi", region_name="us-east-1")
        leaks = envs(backend, cluster, tagging).destroy("ci-3")
    assert backend.calls == [("destroy", "ci-3"), ("remove", "ci-3")]
    assert cluster.calls == [("leftovers", "mlops-ci-3")]
    assert leaks == ["kubernetes persistentvolumeclaim/data-postgres-0 in mlops-ci-3"]


def test_failed_destroy_keeps_the_stack_and_reports_what_is_left() -> None:
    backend = FakeBackend(fail={"destroy"})
    with mock_aws(), pytest.raises(EnvError, match=r"destroy of ci-3 failed .*kubernetes service/serve-churn"):
        tagging = boto3.client("resourcegroupstaggingapi", region_name="us-east-1")
        envs(backend, FakeCluster(leftovers=["service/serve-churn"]), tagging).destroy("ci-3")
    assert ("remove", "ci-3") not in backend.calls  # the stack stays so a retry or the reaper can finish


@pytest.mark.parametrize("name", ["dev", "prod", "ci_1", "CI-1", "ci-", "ci-" + "a" * 40])
def test_only_ci_names_are_accepted(name: str) -> None:
    backend = FakeBackend()
    with pytest.raises(EnvError, match="ci-<id>"):
        envs(backend).destroy(name)
    assert backend.calls == []


# --- leak detection against moto's tagging API -------------------------------------------

@mock_aws
def test_leaks_are_found_by_the_environment_tag() -> None:
    region = "us-east-1"
    s3 = boto3.client("s3", region_name=region)
    tags = [{"Key": "environment", "Value": "ci-9"}, {"Key": "owner", "Value": "ml-platform"}]
    s3.create_bucket(Bucket="ci-9-data")
    s3.put_bucket_tagging(Bucket="ci-9-data", Tagging={"TagSet": tags})
    s3.put_object(Bucket="ci-9-data", Key="datasets/churn/abc/data.parquet", Body=b"x")
    s3.create_bucket(Bucket="ci-9-capture")
    s3.put_bucket_tagging(Bucket="ci-9-capture", Tagging={"TagSet": tags})
    s3.create_bucket(Bucket="ci-10-data")  # another environment: not ours
    s3.put_bucket_tagging(Bucket="ci-10-data", Tagging={"TagSet": [{"Key": "environment", "Value": "ci-10"}]})
    logs = boto3.client("logs", region_name=region)
    logs.create_log_group(logGroupName="/aws/eks/ci-9/cluster", tags={"environment": "ci-9"})
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{region}{z}")["Subnet"]
               ["SubnetId"] for i, z in enumerate("ab")]
    elb = boto3.client("elbv2", region_name=region)
    lb = elb.create_load_balancer(Name="k8s-mlopsci9-servechurn", Subnets=subnets, Tags=tags)
    lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
    tagging = boto3.client("resourcegroupstaggingapi", region_name=region)

    leaks = find_leaks("ci-9", tagging, FakeCluster(leftovers=["deployment.apps/serve-churn"]), s3)

    assert "arn:aws:s3:::ci-9-data (1 objects)" in leaks
    assert "arn:aws:s3:::ci-9-capture (empty)" in leaks
    assert any(arn.startswith("arn:aws:logs:") and "/aws/eks/ci-9/cluster" in arn for arn in leaks)
    assert lb_arn in leaks
    assert "kubernetes deployment.apps/serve-churn in mlops-ci-9" in leaks
    assert not any("ci-10" in leak for leak in leaks)
    assert find_leaks("ci-11", tagging, None, s3) == []


# --- reaping ----------------------------------------------------------------------------

def test_reap_selects_expired_or_old_ci_environments_only() -> None:
    hour = timedelta(hours=1)
    backend = FakeBackend(envs=[
        EnvironmentInfo("ci-expired", NOW - 2 * hour, NOW - hour),
        EnvironmentInfo("ci-old", NOW - 7 * hour, NOW + 5 * hour),  # TTL not reached, but older than 6h
        EnvironmentInfo("ci-fresh", NOW - hour, NOW + 2 * hour),
        EnvironmentInfo("ci-untagged", None, None),  # unknown age: left for a human
        EnvironmentInfo("prod", NOW - 1000 * hour, NOW - 900 * hour),
        EnvironmentInfo("dev", NOW - 1000 * hour, None),
    ])
    with mock_aws():
        tagging = boto3.client("resourcegroupstaggingapi", region_name="us-east-1")
        results = envs(backend, FakeCluster(), tagging).reap(timedelta(hours=6))
    assert results == {"ci-expired": [], "ci-old": []}
    assert [c for c in backend.calls if c[0] == "destroy"] == [("destroy", "ci-expired"), ("destroy", "ci-old")]


def test_reap_dry_run_destroys_nothing_and_failures_are_reported() -> None:
    backend = FakeBackend(envs=[EnvironmentInfo("ci-x", NOW - timedelta(days=1), None)])
    assert envs(backend).reap(timedelta(hours=6), dry_run=True) == {"ci-x": []}
    assert backend.calls == []
    backend.fail = {"destroy"}
    results = envs(backend).reap(timedelta(hours=6))
    assert "destroy of ci-x failed" in results["ci-x"]


@pytest.mark.parametrize(("text", "expected"), [("90m", timedelta(minutes=90)), ("6h", timedelta(hours=6)),
                                                ("2d", timedelta(days=2))])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["6", "h", "-1h", "1w", ""])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(EnvError, match="duration"):
        parse_duration(text)


# --- CLI --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["env", "create", "ci-1"], ["env", "destroy", "ci-1"], ["env", "smoke", "ci-1"],
                                  ["env", "reap", "--older-than", "6h"]])
def test_commands_fail_fast_without_the_pulumi_cli(tmp_path, argv: list[str]) -> None:
    outcome = CliRunner().invoke(app, argv, env={"PATH": str(tmp_path)})
    assert outcome.exit_code == 2, outcome.output
    assert "Pulumi CLI is not installed" in outcome.output
    assert os.environ.get("PATH")  # the test did not change this process's PATH


@pytest.mark.parametrize(("argv", "message"), [(["env", "create", "dev"], "ci-<id>"),
                                               (["env", "create", "ci-1", "--ttl", "soon"], "duration"),
                                               (["env", "reap", "--older-than", "1w"], "duration")])
def test_bad_arguments_exit_2_before_touching_anything(argv: list[str], message: str) -> None:
    outcome = CliRunner().invoke(app, argv)
    assert outcome.exit_code == 2 and message in outcome.output


# --- kubectl, through a stand-in ----------------------------------------------------------

FAKE_KUBECTL = """#!{python}
import http.server, json, socket, sys
args = sys.argv[1:]
open({calls!r}, "a").write(json.dumps(args) + "\\n")
if {fail!r}:
    print('error: services "serve-churn" not found', file=sys.stderr)
    sys.exit(1)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps({{"predictions": [0.3], "rows": len(body["dataframe_split"]["data"])}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(f"Forwarding from 127.0.0.1:{{server.server_port}} -> 80", flush=True)
server.serve_forever()
"""


def _kubectl(tmp_path, monkeypatch, *, fail: bool = False):
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL.format(python=sys.executable, calls=str(calls), fail=fail))
    (bin_dir / "kubectl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return KubectlCluster(), smoke_payload(), calls


def test_predict_talks_to_the_port_kubectl_picked(tmp_path, monkeypatch) -> None:
    cluster, payload, calls = _kubectl(tmp_path, monkeypatch)
    assert cluster.predict("mlops-ci-1", "serve-churn", payload) == {"predictions": [0.3], "rows": 1}
    # Local port left to kubectl (":80"): a fixed one could be someone else's server.
    assert json.loads(calls.read_text()) == ["port-forward", "-n", "mlops-ci-1", "svc/serve-churn", ":80"]


def test_port_forward_failure_is_reported_at_once(tmp_path, monkeypatch) -> None:
    cluster, payload, _ = _kubectl(tmp_path, monkeypatch, fail=True)
    started = time.monotonic()
    with pytest.raises(EnvError, match=r'port-forward svc/serve-churn in mlops-ci-1 failed: .*"serve-churn" not found'):
        cluster.predict("mlops-ci-1", "serve-churn", payload)
    assert time.monotonic() - started < 10  # not the 30 s a retry loop against a dead port would take
