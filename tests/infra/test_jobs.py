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


def option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} rendered {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


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
    assert container(select)["args"] == ["/app/specs/churn.yaml", "--shards", str(shards), "--select"]
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
    args = c["args"]
    assert option(args, "--endpoint") == "churn" and option(args, "--model") == "churn"
    assert option(args, "--alias") == "champion"
    assert option(args, "--window-hours") == "24.0" and option(args, "--min-rows") == "200"
    assert option(args, "--psi-threshold") == "0.2" and option(args, "--drift-share") == "0.3"
    # Ground truth from the endpoint's labels prefix, so an in-cluster monitor can measure and retrain.
    assert option(args, "--labels") == f"s3://{result.outputs['capture_bucket']}/labels/churn/"
    assert "--retrain" in args
    assert c["args"][-1] == "--json"
    assert pod_spec(cronjob)["serviceAccountName"] == "monitoring"
    assert result.outputs["monitoring_cronjobs"] == {"churn": "monitor-churn"}


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_monitor_may_only_create_jobs(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    role = manifest(result, "Role", "monitoring-retrain")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]
    (binding,) = [b for b in manifests(result, "RoleBinding") if b["roleRef"]["kind"] == "Role"]
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
    for name, user in (("train-churn", "training-churn"), ("monitor-churn", "monitoring-churn")):
        c = container(manifest(result, "CronJob", name))
        assert {"configMapRef": {"name": "workload-contract"}} in c["envFrom"]
        # Each pod its own MLflow user (tests/infra/test_credentials.py), never the admin's.
        assert env_of(c)["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {"name": f"mlflow-user-{user}",
                                                                          "key": "MLFLOW_TRACKING_PASSWORD"}}


def _statements(result: RenderResult, role: str) -> list[dict[str, Any]]:
    return json.loads(result.one("aws:iam/rolePolicy:RolePolicy", role).inputs["policy"])["Statement"]


def _resources(statement: dict[str, Any]) -> list[str]:
    r = statement["Resource"]
    return r if isinstance(r, list) else [r]


def _arns(result: RenderResult, *roles: str) -> list[str]:
    return [f"arn:aws:s3:::{result.outputs[f'{role}_bucket']}" for role in roles]


def _grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a, r) for s in statements for a in s["Action"] for r in _resources(s)}


def _kms_buckets(statements: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per KMS action, the buckets whose encryption context it is limited to."""
    return {a: s["Condition"]["StringEquals"]["kms:EncryptionContext:aws:s3:arn"]
            for s in statements for a in s["Action"] if a.startswith("kms:")}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_training_role_reads_data_and_writes_only_dataset_versions(rendered: dict[str, RenderResult],
                                                                   stack: str) -> None:
    result = rendered[stack]
    statements = _statements(result, "jobs-training-irsa")
    data, capture, artifacts = _arns(result, "data", "capture", "artifact")
    grants = _grants(statements)
    writes = {(a, r) for a, r in grants if a.startswith(("s3:Put", "s3:Delete"))}
    # The dataset version `mlops train` records; never the raw data, never a delete.
    assert writes == {("s3:PutObject", f"{data}/datasets/*")}
    assert ("s3:GetObject", f"{data}/*") in grants
    # Of the capture bucket, only the retraining data the monitor leaves under monitoring/<endpoint>/retrain/.
    assert {(a, r) for a, r in grants if r.startswith(capture)} == {
        ("s3:GetObject", f"{capture}/monitoring/*/retrain/*.parquet")}
    # Artifacts go through the tracking server (--serve-artifacts): no grant on that bucket or its key use.
    assert artifacts not in json.dumps(statements)
    # Decrypt what it reads; a data key only for the bucket it writes.
    assert _kms_buckets(statements) == {"kms:Decrypt": sorted([data, capture]), "kms:GenerateDataKey": [data]}


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_monitoring_role_reads_capture_and_data_writes_only_its_state(rendered: dict[str, RenderResult],
                                                                     stack: str) -> None:
    result = rendered[stack]
    statements = _statements(result, "jobs-monitoring-irsa")
    capture, data = _arns(result, "capture", "data")
    grants = _grants(statements)
    writes = {r for a, r in grants if a.startswith(("s3:Put", "s3:Delete"))}
    # The retraining lock, cooldown record, retraining data and cached reference profiles: monitoring/ only.
    assert writes == {f"{capture}/monitoring/*"}
    reads = {r for a, r in grants if a == "s3:GetObject"}
    assert reads == {f"{capture}/captures/*", f"{capture}/monitoring/*", f"{capture}/labels/churn/*",
                     f"{data}/datasets/*"}
    buckets = {r.split("/")[0] for s in statements for r in _resources(s) if r.startswith("arn:aws:s3")}
    assert buckets == {capture, data}
    assert _kms_buckets(statements) == {"kms:Decrypt": sorted([capture, data]), "kms:GenerateDataKey": [capture]}
    assert not [a for a, _ in grants if a.startswith("sns:")]  # no topic configured in the stack files


def test_monitoring_role_may_publish_to_the_configured_topic_only() -> None:
    topic = "arn:aws:sns:us-east-1:123456789012:ml-alerts"

    def edit(config: dict) -> None:
        config["mlops-platform:workloads"]["monitoring"]["alertSnsTopicArn"] = topic

    result = render_with("dev", edit)
    grants = _grants(_statements(result, "jobs-monitoring-irsa"))
    assert [(a, r) for a, r in grants if a.startswith("sns:")] == [("sns:Publish", topic)]
    assert option(container(manifest(result, "CronJob", "monitor-churn"))["args"], "--alert-sns-topic-arn") == topic


def test_monitor_labels_can_be_moved_or_turned_off() -> None:
    def moved(config: dict) -> None:
        config["mlops-platform:serving"]["endpoints"][0]["monitorLabels"] = "s3://labeling-team/labels/churn/truth/"

    result = render_with("dev", moved)
    args = container(manifest(result, "CronJob", "monitor-churn"))["args"]
    assert option(args, "--labels") == "s3://labeling-team/labels/churn/truth/"
    grants = _grants(_statements(result, "jobs-monitoring-irsa"))
    assert ("s3:GetObject", "arn:aws:s3:::labeling-team/labels/churn/truth/*") in grants
    assert ("s3:ListBucket", "arn:aws:s3:::labeling-team") in grants
    assert not [r for _, r in grants if "/labels/" in r and "labeling-team" not in r]

    def off(config: dict) -> None:
        config["mlops-platform:serving"]["endpoints"][0]["monitorLabels"] = False

    result = render_with("dev", off)
    assert "--labels" not in container(manifest(result, "CronJob", "monitor-churn"))["args"]
    assert not [r for _, r in _grants(_statements(result, "jobs-monitoring-irsa")) if "labels" in r]


def test_monitor_labels_must_be_an_s3_uri() -> None:
    def edit(config: dict) -> None:
        config["mlops-platform:serving"]["endpoints"][0]["monitorLabels"] = "/data/labels.csv"

    with pytest.raises(ConfigError) as caught:
        render_with("dev", edit)
    assert str(caught.value) == ("mlops-platform:serving.endpoints[0].monitorLabels: \"/data/labels.csv\" is not true "
                                 "(the capture bucket's labels/<endpoint>/), false (no labels) or an s3:// URI such "
                                 "as s3://my-labels/labels/churn/")


def test_without_a_retraining_job_the_monitor_does_not_retrain() -> None:
    def edit(config: dict) -> None:
        del config["mlops-platform:workloads"]["monitoring"]["retrainJob"]

    result = render_with("dev", edit)
    c = container(manifest(result, "CronJob", "monitor-churn"))
    # The pod may not train itself: it cannot write dataset versions and is sized to monitor.
    assert "--no-retrain" in c["args"] and "--retrain" not in c["args"]
    assert not manifests(result, "Role") and "MLOPS_RETRAIN_JOBS_DIR" not in env_of(c)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_job_pods_write_only_under_their_scratch_volume(rendered: dict[str, RenderResult], stack: str) -> None:
    for name in ("train-churn", "monitor-churn"):
        c = container(manifest(rendered[stack], "CronJob", name))
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        (scratch,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "tmp"]
        env = env_of(c)
        # The monitor's alerts file and any state go to MLOPS_WORKDIR, inside the writable emptyDir.
        assert env["HOME"] == scratch and env["MLOPS_WORKDIR"].startswith(f"{scratch}/")


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
    jobs = result.one("mlops:jobs:Jobs", "jobs").urn
    # Only the cluster-wide retraining admission policy (this stack owns its cluster) remains.
    assert {r.type.rsplit(":", 1)[1] for r in result.resources if r.parent == jobs} == {
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert not manifests(result, "Role")
    assert result.outputs["training_jobs"] == {} and result.outputs["monitoring_cronjobs"] == {}
