"""Storage: what each environment kind registers for its buckets, asserted property by property."""

from __future__ import annotations

import json

import pytest
from parliament import analyze_policy_string
from typer.testing import CliRunner

from components.render import RenderedResource, RenderResult, load_stack_config, render_stack, stack_file
from workloads.cli import app

AWS_STACKS = ["dev", "staging", "prod", "ci"]
ALL_STACKS = [*AWS_STACKS, "local"]
ROLES = ("data", "artifacts", "capture")
SECRET = "a-very-secret-admin-password"

BUCKET = "aws:s3/bucket:Bucket"


@pytest.fixture(scope="module")
def stacks() -> dict[str, RenderResult]:
    return {name: render_stack(name, secrets={"trackingAdminPassword": SECRET}) for name in ALL_STACKS}


def buckets(result: RenderResult) -> list[RenderedResource]:
    return [r for r in result.of_type(BUCKET) if r.name in {f"storage-{role}" for role in ROLES}]


def config_for(result: RenderResult, type_: str, bucket: RenderedResource) -> RenderedResource:
    """The bucket's sub-resource of a type (they take `bucket=bucket.id`, the mock id)."""
    matches = [r for r in result.of_type(type_) if r.inputs.get("bucket") == f"{bucket.name}-id"]
    assert len(matches) == 1, f"{bucket.name}: expected one {type_}, found {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_stack_renders_with_the_outputs_contract(stacks: dict[str, RenderResult], stack: str) -> None:
    outputs = stacks[stack].outputs
    for key in ("environment", "data_bucket", "artifact_bucket", "capture_bucket", "s3_endpoint", "kms_key_arn"):
        assert key in outputs, f"{stack}: stack output {key} missing"
    assert outputs["environment"] == stack


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_three_buckets_share_one_rotating_customer_managed_key(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    assert len(buckets(result)) == 3
    key = result.one("aws:kms/key:Key", "storage-key")
    assert key.inputs["enableKeyRotation"] is True
    assert result.outputs["kms_key_arn"].startswith("arn:aws:kms:")
    assert result.outputs["s3_endpoint"] is None


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_buckets_versioned(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    for bucket in buckets(result):
        versioning = config_for(result, "aws:s3/bucketVersioning:BucketVersioning", bucket)
        assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_buckets_encrypted_with_the_kms_key(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    for bucket in buckets(result):
        sse = config_for(result, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", bucket)
        default = sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
        assert default["sseAlgorithm"] == "aws:kms"
        assert default["kmsMasterKeyId"] == result.outputs["kms_key_arn"]


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_buckets_private(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    for bucket in buckets(result):
        block = config_for(result, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
        for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            assert block.inputs[flag] is True, f"{bucket.name}: {flag}"
        ownership = config_for(result, "aws:s3/bucketOwnershipControls:BucketOwnershipControls", bucket)
        assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_buckets_deny_requests_without_tls(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    for bucket in buckets(result):
        policy = config_for(result, "aws:s3/bucketPolicy:BucketPolicy", bucket)
        document = json.loads(policy.inputs["policy"])
        deny = [s for s in document["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and s["Principal"] == "*"
                   and len(s["Resource"]) == 2 for s in deny)
        assert analyze_policy_string(policy.inputs["policy"]).findings == []


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_lifecycle_expires_noncurrent_versions_and_aborts_uploads(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    days = load_stack_config(stack_file(stack))["mlops-platform:storage"]["noncurrentVersionDays"]
    for bucket in buckets(result):
        lifecycle = config_for(result, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", bucket)
        rules = {rule["id"]: rule for rule in lifecycle.inputs["rules"]}
        assert rules["expire-noncurrent-versions"]["noncurrentVersionExpiration"]["noncurrentDays"] == days
        assert rules["abort-incomplete-multipart-uploads"]["abortIncompleteMultipartUpload"]["daysAfterInitiation"] >= 1
        assert all(rule["status"] == "Enabled" for rule in rules.values())


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_protection_follows_the_kind(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    stateful = [*buckets(result), result.one("aws:kms/key:Key", "storage-key")]
    for resource in stateful:
        assert resource.protect is (stack == "prod"), f"{stack}: {resource.name} protect"
        assert resource.retain_on_delete is (stack == "prod"), f"{stack}: {resource.name} retain_on_delete"
    for bucket in buckets(result):
        assert bucket.inputs.get("forceDestroy", False) is (stack == "ci"), f"{stack}: {bucket.name} forceDestroy"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_every_aws_resource_is_tagged_through_the_provider(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    providers = [r for r in result.of_type("pulumi:providers:aws")]
    assert len(providers) == 1, "one explicit AWS provider carries the default tags"
    provider = providers[0]
    tags = json.loads(provider.inputs["defaultTags"])["tags"] if isinstance(provider.inputs["defaultTags"], str) \
        else provider.inputs["defaultTags"]["tags"]
    assert tags["environment"] == stack
    assert tags["owner"] and tags["cost-center"]
    aws_resources = [r for r in result.resources if r.custom and r.type.startswith("aws:")]
    assert aws_resources
    for resource in aws_resources:
        assert resource.provider and resource.provider.startswith(provider.urn), f"{resource.name} uses {resource.provider}"


def test_local_stack_gets_an_in_cluster_s3_store(stacks: dict[str, RenderResult]) -> None:
    result = stacks["local"]
    assert not [r for r in result.resources if r.type.startswith("aws:")], "cloud: none must not touch AWS"
    minio = result.one("kubernetes:apps/v1:StatefulSet", "storage-minio")
    claim = minio.inputs["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    secret = result.one("kubernetes:core/v1:Secret", "storage-minio-credentials")
    assert "stringData" in secret.secret_inputs, "generated credentials must stay secret"
    job = result.one("kubernetes:batch/v1:Job", "storage-create-buckets")
    script = job.inputs["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    for bucket in ("data_bucket", "artifact_bucket", "capture_bucket"):
        name = result.outputs[bucket]
        assert f"mb --ignore-existing store/{name}" in script
        assert f"version enable store/{name}" in script
    assert result.outputs["s3_endpoint"].startswith("http://minio.mlops-local.svc")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_secrets_never_appear_in_plain_outputs_or_inputs(stacks: dict[str, RenderResult], stack: str) -> None:
    result = stacks[stack]
    for key, value in result.outputs.items():
        if key not in result.secret_outputs:
            assert SECRET not in json.dumps(value, default=str), f"output {key} leaks the secret"
    for resource in result.resources:
        plain = {k: v for k, v in resource.inputs.items() if k not in resource.secret_inputs}
        assert SECRET not in json.dumps(plain, default=str), f"{resource.type} {resource.name} holds the secret in plain text"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_mlops_plan_prints_the_tree(stack: str) -> None:
    outcome = CliRunner().invoke(app, ["plan", stack])
    assert outcome.exit_code == 0, outcome.output
    assert f"stack {stack}" in outcome.output
    assert "mlops:storage:Storage" in outcome.output


def test_mlops_plan_json_and_bad_config(tmp_path) -> None:
    outcome = CliRunner().invoke(app, ["plan", "prod", "--json"])
    assert outcome.exit_code == 0
    document = json.loads(outcome.output)
    assert any(r["protect"] for r in document["resources"])
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(stack_file("dev").read_text().replace("kind: dev", "kind: qa"))
    outcome = CliRunner().invoke(app, ["plan", str(bad)])
    assert outcome.exit_code == 2
    assert "mlops-platform:kind" in outcome.output
