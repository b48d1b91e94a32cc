"""Training Job templates and monitoring CronJobs, as rendered for every stack."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from components.config import ConfigError
from components.render import RenderResult, load_stack_config, render_stack, stack_file
from tests.infra.conftest import ADMIN_PASSWORD, ALL_STACKS, AWS_STACKS
from tests.infra.helpers import env_of, manifest, manifests, pod_spec

SHARDS = {"dev": 1, "staging": 4, "prod": 8, "ci": 1, "local": 1}


def train(result: RenderResult, name: str = "train-churn") -> dict[str, Any]:
    return manifest(result, "CronJob", name)


def job_spec(cronjob: dict[str, Any]) -> dict[str, Any]:
    return cronjob["spec"]["jobTemplate"]["spec"]


def container(cronjob: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(cronjob)["containers"]
    return c


def render_with(stack: str, edit) -> RenderResult:
    config = load_stack_config(stack_file(stack))
    edit(config)
    return render_stack(stack, config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_training_template_is_suspended_and_runs_mlops_train(rendered: dict[str, RenderResult], stack: str) -> None:
    cronjob = train(rendered[stack])
    assert cronjob["spec"]["suspend"] is True
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    c = container(cronjob)
    assert c["command"] == ["mlops", "train"]
    assert c["args"][0] == "/app/specs/churn.yaml"
    spec = job_spec(cronjob)
    assert spec["backoffLimit"] == 1
    assert spec["activeDeadlineSeconds"] == 3 * 3600
    assert spec["ttlSecondsAfterFinished"] == 24 * 3600
    pod = pod_spec(cronjob)
    assert pod["serviceAccountName"] == "training" and pod["restartPolicy"] == "Never"
    # Training pods must reach the tracking server through its NetworkPolicy.
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"][
        "mlops-platform/tracking-client"] == "true"
    assert rendered[stack].outputs["training_jobs"] == {"churn": "train-churn"}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_search_fans_out_as_an_indexed_job_then_selects(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    spec = job_spec(train(result))
    shards = SHARDS[stack]
    names = {m["metadata"]["name"] for m in manifests(result, "CronJob")}
    if shards == 1:
        assert "completionMode" not in spec and container(train(result))["args"] == ["/app/specs/churn.yaml"]
        assert "train-churn-select" not in names
        return
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", shards, shards)
    assert container(train(result))["args"] == ["/app/specs/churn.yaml", "--shard", "$(JOB_COMPLETION_INDEX)",
                                                "--shards", str(shards)]
    # shards and select agree on the group by spec hash + data digest, not by a Job-specific variable
    assert "MLOPS_SEARCH_GROUP" not in env_of(container(train(result)))
    select = train(result, "train-churn-select")
    assert select["spec"]["suspend"] is True
    assert container(select)["args"] == ["/app/specs/churn.yaml", "--select", "--shards", str(shards)]
    assert "completionMode" not in job_spec(select)


@pytest.mark.parametrize(("stack", "selector", "toleration"), [
    ("dev", {"mlops-platform/pool": "cpu"},
     {"key": "mlops-platform/training", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}),
    ("prod", {"mlops-platform/pool": "cpu"},
     {"key": "mlops-platform/training", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}),
    # ci names no pool: any training pool of the shared cluster.
    ("ci", {"mlops-platform/node-role": "training"},
     {"key": "mlops-platform/training", "operator": "Exists", "effect": "NoSchedule"}),
])
def test_training_runs_on_the_training_pools(rendered: dict[str, RenderResult], stack: str,
                                             selector: dict, toleration: dict) -> None:
    pod = pod_spec(train(rendered[stack]))
    assert pod["nodeSelector"] == selector
    assert pod["tolerations"] == [toleration]
    assert "nvidia.com/gpu" not in container(train(rendered[stack]))["resources"]["limits"]


def test_local_training_has_no_pool_placement(rendered: dict[str, RenderResult]) -> None:
    pod = pod_spec(train(rendered["local"]))
    assert "nodeSelector" not in pod and "tolerations" not in pod


def _use_gpu_pool(config: dict) -> None:
    config["mlops-platform:workloads"]["training"][0]["pool"] = "gpu"


def test_gpu_pool_gets_gpu_limits_and_toleration() -> None:
    result = render_with("dev", _use_gpu_pool)
    cronjob = train(result)
    assert container(cronjob)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container(cronjob)["resources"]["requests"]["nvidia.com/gpu"] == "1"
    tolerations = pod_spec(cronjob)["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert pod_spec(cronjob)["nodeSelector"] == {"mlops-platform/pool": "gpu"}
    kubernetes_validate.validate(cronjob, "1.31", strict=True)


def test_gpus_on_a_cpu_pool_are_rejected() -> None:
    def edit(config: dict) -> None:
        config["mlops-platform:workloads"]["training"][0]["gpus"] = 2

    with pytest.raises(ConfigError, match="has no GPUs"):
        render_with("dev", edit)


def test_unknown_retrain_job_is_rejected() -> None:
    def edit(config: dict) -> None:
        config["mlops-platform:workloads"]["monitoring"]["retrainJob"] = "nope"

    with pytest.raises(ConfigError, match="retrainJob: 'nope'"):
        render_with("dev", edit)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_monitoring_cronjob_per_endpoint(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    config = load_stack_config(stack_file(stack))["mlops-platform:workloads"]["monitoring"]
    cronjob = manifest(result, "CronJob", "monitor-churn")
    spec = cronjob["spec"]
    assert spec["schedule"] == config["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    assert "suspend" not in spec
    c = container(cronjob)
    assert c["command"] == ["mlops", "monitor"]
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=False))
    assert args["--endpoint"] == "churn" and args["--model"] == "churn" and args["--alias"] == "champion"
    assert args["--window-hours"] == "24" and args["--min-rows"] == "200" and args["--psi-threshold"] == "0.2"
    assert c["args"][-1] == "--json"
    assert pod_spec(cronjob)["serviceAccountName"] == "monitoring"
    assert result.outputs["monitoring_cronjobs"] == {"churn": "monitor-churn"}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_monitor_may_only_create_jobs(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    (role,) = manifests(result, "Role")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]
    (binding,) = manifests(result, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "monitoring", "namespace": f"mlops-{stack}"}]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_only_the_monitor_gets_an_api_token(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    for workload in manifests(result, "CronJob"):
        pod = pod_spec(workload)
        tokens = [v for v in pod.get("volumes", []) for s in v.get("projected", {}).get("sources", [])
                  if "serviceAccountToken" in s]
        if workload["metadata"]["name"].startswith("monitor-"):
            assert len(tokens) == 1
            assert tokens[0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] <= 3600
        else:
            assert tokens == []


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_retraining_job_manifests_match_the_templates(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    data = manifest(result, "ConfigMap", "retrain-jobs")["data"]
    jobs = [json.loads(data[key]) for key in sorted(data)]
    assert len(jobs) == (1 if SHARDS[stack] == 1 else 2)
    assert job_spec(train(result)) == jobs[0]["spec"]
    for job in jobs:
        # What the monitor will POST must be a valid Job on its own.
        kubernetes_validate.validate({**job, "metadata": {**job["metadata"], "namespace": f"mlops-{stack}"}},
                                     "1.31", strict=True)
    env = env_of(container(manifest(result, "CronJob", "monitor-churn")))
    assert env["MLOPS_RETRAIN_JOBS_DIR"] == "/etc/mlops/retrain"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_contract_reaches_pods_through_a_configmap(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    data = manifest(result, "ConfigMap", "workload-contract")["data"]
    assert data["MLOPS_DATA_BUCKET"] == result.outputs["data_bucket"]
    assert data["MLOPS_CAPTURE_BUCKET"] == result.outputs["capture_bucket"]
    assert data["MLFLOW_TRACKING_URI"] == result.outputs["tracking_uri"]
    assert data["MLFLOW_DISABLE_TELEMETRY"] == "true" and data["DO_NOT_TRACK"] == "true"
    assert ADMIN_PASSWORD not in json.dumps(data)
    for name in ("train-churn", "monitor-churn"):
        c = container(manifest(result, "CronJob", name))
        assert {"configMapRef": {"name": "workload-contract"}} in c["envFrom"]
        assert env_of(c)["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {"name": "tracking-credentials",
                                                                          "key": "MLFLOW_TRACKING_PASSWORD"}}


def _statements(result: RenderResult, role: str) -> list[dict[str, Any]]:
    return json.loads(result.one("aws:iam/rolePolicy:RolePolicy", role).inputs["policy"])["Statement"]


def _resources(statement: dict[str, Any]) -> list[str]:
    r = statement["Resource"]
    return r if isinstance(r, list) else [r]


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_training_role_reads_data_and_writes_artifacts(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    data, artifacts = (f"arn:aws:s3:::{result.outputs[k]}" for k in ("data_bucket", "artifact_bucket"))
    for statement in _statements(result, "jobs-training-irsa"):
        writes = [a for a in statement["Action"] if a.startswith(("s3:Put", "s3:Delete"))]
        if writes:
            assert "s3:DeleteObject" not in writes
            # Artifacts, and the dataset versions training records (never the raw data itself).
            assert set(_resources(statement)) <= {f"{artifacts}/*", f"{data}/datasets/*"}
    reads = [r for s in _statements(result, "jobs-training-irsa") if "s3:GetObject" in s["Action"]
             for r in _resources(s)]
    assert f"{data}/*" in reads
    # Of the capture bucket, only the retraining data the monitor leaves under monitoring/.
    capture = f"arn:aws:s3:::{result.outputs['capture_bucket']}"
    capture_grants = [(a, r) for s in _statements(result, "jobs-training-irsa") for r in _resources(s)
                      if r.startswith(capture) for a in s["Action"]]
    assert capture_grants == [("s3:GetObject", f"{capture}/monitoring/*")]


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_monitoring_role_reads_capture_and_data_writes_only_its_state(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    statements = _statements(result, "jobs-monitoring-irsa")
    capture = f"arn:aws:s3:::{result.outputs['capture_bucket']}"
    for statement in statements:
        if [a for a in statement["Action"] if a.startswith(("s3:Put", "s3:Delete"))]:
            # Writes only the retraining lock, cooldown record and retraining data.
            assert _resources(statement) == [f"{capture}/monitoring/*"]
    buckets = {r.split("/")[0] for s in statements for r in _resources(s) if r.startswith("arn:aws:s3")}
    assert buckets == {f"arn:aws:s3:::{result.outputs[k]}" for k in ("capture_bucket", "data_bucket")}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_job_service_accounts_carry_their_irsa_role(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    for account in ("training", "monitoring"):
        sa = manifest(result, "ServiceAccount", account)
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(f"jobs-{account}-irsa")
        assert sa["automountServiceAccountToken"] is False


def test_no_jobs_without_training_or_endpoints() -> None:
    def edit(config: dict) -> None:
        config["mlops-platform:workloads"] = {"imageTag": "0.1.0"}
        config["mlops-platform:serving"] = {"endpoints": []}

    result = render_with("local", edit)
    assert not manifests(result, "CronJob") and not manifests(result, "Role")
    assert result.outputs["training_jobs"] == {} and result.outputs["monitoring_cronjobs"] == {}
