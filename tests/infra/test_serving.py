"""Serving endpoints: Deployment running `mlops serve`, HPA, PDB, Service, Ingress, IRSA."""

from __future__ import annotations

import json

import pytest

from components.render import RenderResult, load_stack_config, render_stack, stack_file
from components.serving import MODEL_VERSION_ANNOTATION
from tests.infra.conftest import ADMIN_PASSWORD, ALL_STACKS, AWS_STACKS
from tests.infra.helpers import env_of, manifest, pod_spec

CONTRACT = ("MLOPS_ENVIRONMENT", "MLOPS_NAMESPACE", "MLOPS_TRACKING_URI", "MLOPS_DATA_BUCKET",
            "MLOPS_ARTIFACT_BUCKET", "MLOPS_CAPTURE_BUCKET", "MLOPS_CLUSTER_NAME", "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def deployment(result: RenderResult) -> dict:
    return manifest(result, "Deployment", "serve-churn")


def container(result: RenderResult) -> dict:
    return pod_spec(deployment(result))["containers"][0]


def option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} rendered {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_runs_mlops_serve_with_the_endpoint_settings(rendered: dict[str, RenderResult], stack: str) -> None:
    c = container(rendered[stack])
    endpoint = load_stack_config(stack_file(stack))["mlops-platform:serving"]["endpoints"][0]
    assert c["command"] == ["mlops", "serve"]
    args = c["args"]
    assert option(args, "--model") == "churn" and option(args, "--alias") == "champion"
    assert option(args, "--endpoint-name") == "churn" and "--capture" in args
    assert option(args, "--workers") == str(endpoint.get("workers", 1))
    assert option(args, "--max-batch-rows") == "256" and option(args, "--max-wait-ms") == "2.0"
    # Settings travel as arguments the CLI parses, never as variables it does not read.
    assert not [k for k in env_of(c) if k.startswith("MLOPS_SERVE_")]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_listens_where_the_service_and_probes_reach_it(rendered: dict[str, RenderResult], stack: str) -> None:
    c = container(rendered[stack])
    assert option(c["args"], "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(option(c["args"], "--port"))}
    (service_port,) = manifest(rendered[stack], "Service", "serve-churn")["spec"]["ports"]
    assert service_port["targetPort"] in ports
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_writes_only_under_its_scratch_volume(rendered: dict[str, RenderResult], stack: str) -> None:
    c = container(rendered[stack])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    (scratch,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "tmp"]
    volumes = {v["name"]: v for v in pod_spec(deployment(rendered[stack]))["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    env = env_of(c)
    assert env["HOME"] == scratch and env["MLOPS_WORKDIR"].startswith(f"{scratch}/")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_stack_contract_env(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    env = env_of(container(result))
    for key in CONTRACT:
        assert key in env, f"{stack}: {key} missing"
    assert env["MLOPS_CAPTURE_BUCKET"] == result.outputs["capture_bucket"]
    assert env["MLFLOW_TRACKING_URI"] == result.outputs["tracking_uri"]
    # The endpoint's own MLflow and MinIO users (tests/infra/test_credentials.py), never an admin's.
    assert env["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": {"name": "mlflow-user-serving-churn",
                                                                "key": "MLFLOW_TRACKING_PASSWORD"}}
    if stack == "local":
        assert env["MLFLOW_S3_ENDPOINT_URL"] == result.outputs["s3_endpoint"]
        assert container(result)["envFrom"] == [{"secretRef": {"name": "minio-user-serving"}}]
    else:
        assert "MLFLOW_S3_ENDPOINT_URL" not in env


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_probes(rendered: dict[str, RenderResult], stack: str) -> None:
    c = container(rendered[stack])
    assert c["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"


def test_model_version_change_rolls_the_deployment() -> None:
    config = load_stack_config(stack_file("local"))
    serving = config["mlops-platform:serving"]
    before = render_stack("local", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    serving["endpoints"][0]["modelVersion"] = "7"
    after = render_stack("local", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    annotation = lambda r: deployment(r)["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION_ANNOTATION]  # noqa: E731
    assert annotation(after) == "7" and annotation(before) != annotation(after)


@pytest.mark.parametrize(("stack", "lo", "hi"), [("dev", 1, 3), ("staging", 2, 6), ("prod", 3, 12), ("local", 1, 1)])
def test_hpa_on_cpu(rendered: dict[str, RenderResult], stack: str, lo: int, hi: int) -> None:
    hpa = manifest(rendered[stack], "HorizontalPodAutoscaler", "serve-churn")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve-churn"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (lo, hi)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_pdb_and_service(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    selector = deployment(result)["spec"]["selector"]["matchLabels"]
    assert manifest(result, "PodDisruptionBudget", "serve-churn")["spec"]["selector"]["matchLabels"] == selector
    service = manifest(result, "Service", "serve-churn")["spec"]
    assert service["type"] == "ClusterIP" and service["selector"] == selector


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_endpoint_urls_in_outputs(rendered: dict[str, RenderResult], stack: str) -> None:
    url = rendered[stack].outputs["serving_endpoints"]["churn"]
    if stack in ("prod", "staging"):
        assert url.startswith("https://churn.")
        ingress = manifest(rendered[stack], "Ingress", "serve-churn")
        assert ingress["spec"]["tls"][0]["hosts"] == [url.removeprefix("https://")]
    else:
        assert url == f"http://serve-churn.mlops-{stack}.svc.cluster.local:80"


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci"])
def test_runs_on_the_system_pool(rendered: dict[str, RenderResult], stack: str) -> None:
    spec = pod_spec(deployment(rendered[stack]))
    assert spec["nodeSelector"] == {"mlops-platform/pool": "system"}
    assert not spec.get("tolerations")


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_serving_role_writes_capture_only(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", "serving-irsa").inputs["policy"])
    capture = f"arn:aws:s3:::{result.outputs['capture_bucket']}"
    s3 = [(a, r) for s in policy["Statement"] for a in s["Action"] if a.startswith("s3:")
          for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    # Inference capture and the profile bins it summarises on; models are loaded through the tracking
    # server (--serve-artifacts).
    assert sorted(s3) == [("s3:AbortMultipartUpload", f"{capture}/captures/*"), ("s3:GetBucketLocation", capture),
                          ("s3:GetObject", f"{capture}/monitoring/profile-bins/*"),
                          ("s3:ListBucket", capture), ("s3:PutObject", f"{capture}/captures/*")]
    assert result.outputs["data_bucket"] not in json.dumps(policy)
    assert result.outputs["artifact_bucket"] not in json.dumps(policy)
    # The shared key only for the capture bucket (S3 Bucket Keys: the encryption context is the bucket ARN).
    kms = [s for s in policy["Statement"] if any(a.startswith("kms:") for a in s["Action"])]
    assert sorted(a for s in kms for a in s["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    for statement in kms:  # the bucket key for the capture bucket only
        assert statement["Resource"] == [result.outputs["kms_key_arn"]]
        assert statement["Condition"] == {"StringEquals": {"kms:EncryptionContext:aws:s3:arn": [capture]}}
