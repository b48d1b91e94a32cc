"""IAM exercised, not only linted (issue 12, part 2): the dev stack's workloads under exactly their IRSA policies.

moto enforces IAM (tests/contract/iam.py says what it judges and what it cannot: conditions, bucket
and key policies, KMS, SNS topic scoping). Each IRSA role of the render is an IAM user holding
exactly the role's policies, and a pod gets its service account's keys (`Cluster.credentials`).

- Happy path: the contract harness flow (tracking, training template, serving with capture,
  monitoring on normal and drifted traffic with labels, the retraining Job it creates, the alert
  through SNS) with enforcement on: zero denials in moto's audit, no 403 in its request log.
- Least privilege: every rendered grant (statement, action, resource) is used by that flow, except
  those it cannot exercise, each named with its reason; KMS grants match the S3 calls made.
- Out of scope, one test each, with boto3 and the role's keys: training writing the artifact
  bucket, serving reading datasets, monitoring writing artifacts, any role deleting a bucket,
  objects outside its prefixes, or object history. Each has its control: the admin's same request
  passes IAM, so a denial is the policy's, not a broken server's.
dev has no alert topic configured; it is rendered here with one so the alert path is exercised.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.iam.access_control import IAMPolicyStatement, PermissionResult

from components.manifests import to_manifests
from components.render import ACCOUNT_ID, RenderResult, render_stack
from components.stack_file import load_stack_config, stack_file
from tests.contract import test_rendered_runs as harness
from tests.contract.iam import (
    Decision,
    EnforcingS3,
    IrsaRole,
    enforce_iam,
    irsa_roles,
    moto_document,
    s3_arns,
)
from tests.contract.kubelet import SCRATCH_ROOT

pytestmark = pytest.mark.servers

STACK = "dev"
TOPIC_NAME = "mlops-dev-alerts"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT_ID}:{TOPIC_NAME}"
WORKLOADS = ("mlflow", "training", "serving", "monitoring", "labeler")  # service accounts of the workloads
ADDONS = ("aws-node", "cluster-autoscaler", "ebs-csi-controller-sa")  # kube-system IRSA: no S3 at all
ACCOUNTS = WORKLOADS + ADDONS
BUCKETS = ("data", "artifact", "capture")
PREFIXES = ("contract-denial/", "incoming/", "datasets/", "mlflow/", "captures/", "labels/", "monitoring/")
# What issue 12 lets each role delete (bucket, prefix); every other delete is out of scope.
DELETES = {"mlflow": {("artifact", "mlflow/")}, "monitoring": {("capture", "monitoring/")}}
# Grants the flow cannot exercise, and why they stay.
UNEXERCISED = {
    ("*", "s3:AbortMultipartUpload"): "cleans up a failed multipart upload; nothing fails in the flow",
    ("*", "s3:GetBucketLocation"): "region discovery by S3 clients; botocore with a set region skips it",
    ("mlflow", "s3:DeleteObject"): "deletes artifacts of deleted runs (mlflow gc); the flow deletes none",
    ("labeler", "s3:DeleteObject"): "corrects a labels file; the flow writes each once",
}
# S3 with SSE-KMS calls KMS as the caller: GetObject needs kms:Decrypt; PutObject kms:GenerateDataKey,
# and kms:Decrypt too for multipart uploads (AWS S3 guide, "Multipart upload API and permissions").
KMS_FOR = {"s3:GetObject": {"kms:Decrypt"}, "s3:PutObject": {"kms:GenerateDataKey", "kms:Decrypt"}}


@dataclass
class Enforced:
    """The module's enforcing server, the render's roles and the keys standing in for them."""

    server: EnforcingS3
    roles: dict[str, IrsaRole]
    credentials: dict[str, dict[str, str]]
    buckets: dict[str, str]  # data/artifact/capture -> bucket name (the render's contract)
    queue_url: str  # an SQS queue subscribed to the alert topic

    def client(self, account: str | None = None, service: str = "s3") -> Any:
        if account is None:
            return self.server.client(service=service)  # the admin
        keys = self.credentials[account]
        return self.server.client(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"], service=service)

    def presigned_get(self, account: str | None, bucket: str, key: str) -> Any:
        """GET through a URL the account signed (SigV4, as the tracking server signs them), sent unsigned."""
        import boto3
        import httpx
        from botocore.config import Config

        keys = self.credentials[account] if account else dict(zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                                                  self.server.admin_keys, strict=True))
        s3 = boto3.client("s3", endpoint_url=self.server.url, region_name="us-east-1",
                          aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                          config=Config(signature_version="s3v4"))
        return httpx.get(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60))


@dataclass
class HappyPath:
    decisions: list[Decision]
    forbidden: list[str]  # 403 lines of moto's request log
    failure: str | None = None
    report: list[str] = field(default_factory=list)


def code(call: Callable[..., Any], **params: Any) -> str:
    """The AWS error code of `call(**params)`, or "ok"."""
    try:
        call(**params)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "ok"


@pytest.fixture(scope="module")
def rendered() -> RenderResult:
    config = load_stack_config(stack_file(STACK))
    workloads = dict(config["mlops-platform:workloads"])
    workloads["monitoring"] = {**workloads.get("monitoring", {}), "alertSnsTopicArn": TOPIC}
    return render_stack(STACK, config={**config, "mlops-platform:workloads": workloads}, stack_name=STACK,
                        secrets={"trackingAdminPassword": harness.ADMIN_PASSWORD})


@pytest.fixture(scope="module")
def enforced(rendered: RenderResult) -> Iterator[Enforced]:
    server = EnforcingS3(SCRATCH_ROOT / f"iam-{uuid.uuid4().hex[:8]}")
    try:
        roles = irsa_roles(rendered)
        contract = next(m for m in to_manifests(rendered) if m["kind"] == "ConfigMap"
                        and m["metadata"]["name"] == "workload-contract")["data"]
        buckets = {kind: contract[f"MLOPS_{kind.upper()}_BUCKET"] for kind in BUCKETS}
        credentials = enforce_iam(server, {**roles, **readers(buckets["data"])})
        admin = server.client()
        for bucket in buckets.values():  # as rendered: versioned; a marker keeps each bucket non-empty
            admin.create_bucket(Bucket=bucket)
            admin.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            admin.put_object(Bucket=bucket, Key="contract-denial/marker", Body=b"keeps the bucket non-empty")
        sns, sqs = server.client(service="sns"), server.client(service="sqs")
        topic = sns.create_topic(Name=TOPIC_NAME)["TopicArn"]
        queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        yield Enforced(server, roles, credentials, buckets, queue_url)
    finally:
        server.stop()


def readers(bucket: str) -> dict[str, IrsaRole]:
    """Two users that are not from the render: GetObject on one prefix, with and without s3:ListBucket."""
    read = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/contract-denial/*"}
    listing = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}
    return {name: IrsaRole(name, "tests", name, ({"Version": "2012-10-17", "Statement": statements},))
            for name, statements in (("reader", [read]), ("lister", [read, listing]))}


@contextmanager
def database() -> Iterator[str]:
    """A throwaway Postgres database for the tracking server (conftest's pg_database, module-scoped)."""
    import psycopg2

    name = f"mlops_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 (user postgres): {exc}")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(scope="module")
def happy_path(enforced: Enforced, rendered: RenderResult) -> HappyPath:
    """The contract harness flow once, every pod signing with its service account's keys."""
    server = enforced.server
    seen, logged = len(server.decisions()), len(server.forbidden_lines())
    failure = None
    with database() as uri:
        run = harness.Run(STACK, rendered, uri, s3=server)
        run.stack = f"{STACK}-iam"  # outcomes-dev-iam.txt, beside the unenforced run's outcomes-dev.txt
        run.kubelet.cluster.credentials = enforced.credentials
        run.labeler = enforced.client("labeler")  # ground truth from the labeling process's role only
        # Every AWS client in a pod (SNS alerts included) talks to the stand-in, never to the cloud.
        run.kubelet.cluster.extra_env["AWS_ENDPOINT_URL"] = server.url
        try:
            harness.test_every_rendered_workload_runs_as_rendered(run)
        except (Exception, pytest.fail.Exception) as exc:  # reported after the denials that may explain it
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            run.stop()
    result = HappyPath(server.decisions()[seen:], server.forbidden_lines()[logged:], failure)
    result.report = usage_report(enforced.roles, result.decisions)
    (SCRATCH_ROOT / f"iam-{STACK}.txt").write_text("\n".join(result.report) + "\n")
    return result


# --- what the happy path used -----------------------------------------------------------------------


def grants(role: IrsaRole) -> list[tuple[str, str, str]]:
    """(Sid, action, resource) of every Allow in the role's documents as moto gets them."""
    found = []
    for index, document in enumerate(role.documents):
        for number, statement in enumerate(moto_document(document)["Statement"]):
            if statement["Effect"] != "Allow":
                continue
            sid = statement.get("Sid", f"policy{index}.statement{number}")
            for action in _list(statement["Action"]):
                found += [(sid, action, resource) for resource in _list(statement["Resource"])]
    return found


def _list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def covers(action: str, resource: str, decision: Decision) -> bool:
    statement = IAMPolicyStatement({"Effect": "Allow", "Action": action, "Resource": resource})
    return statement.is_action_permitted(decision.action, decision.resource) == PermissionResult.PERMITTED


def unexercised_reason(account: str, action: str) -> str | None:
    if action.startswith("kms:"):
        return "moto never calls KMS: test_kms_grants_match_the_s3_calls_of_the_happy_path judges these"
    return UNEXERCISED.get((account, action)) or UNEXERCISED.get(("*", action))


def usage_report(roles: dict[str, IrsaRole], decisions: list[Decision]) -> list[str]:
    """Per role: the requests it made (action on bucket/prefix, count) and each rendered grant unused."""
    lines = []
    for account in WORKLOADS:
        role = roles[account]
        mine = [d for d in decisions if d.user == role.user and d.outcome == "allowed"]
        used: dict[str, int] = {}
        for d in mine:
            key = f"{d.action} {'/'.join(d.resource.removeprefix('arn:aws:s3:::').split('/')[:3])}" + \
                (f" ({d.via})" if d.via else "")
            used[key] = used.get(key, 0) + 1
        lines.append(f"[{account}] {role.role}: {len(mine)} allowed requests")
        lines += [f"  used   {key} x{count}" for key, count in sorted(used.items())]
        for sid, action, resource in grants(role):
            if not any(covers(action, resource, d) for d in mine):
                reason = unexercised_reason(account, action)
                lines.append(f"  unused {sid}: {action} on {resource}" + (f" (kept: {reason})" if reason else ""))
    return lines


# --- the render ------------------------------------------------------------------------------------


def test_each_workload_has_its_own_irsa_role_on_the_renders_buckets(enforced: Enforced) -> None:
    assert set(enforced.roles) == set(ACCOUNTS), "a new IRSA role: add it to WORKLOADS or ADDONS here"
    names = set(enforced.buckets.values())
    for account in WORKLOADS:
        role = enforced.roles[account]
        assert role.namespace == "mlops-dev" and role.documents, role
        for arn in set().union(*(s3_arns(d) for d in role.documents)):
            bucket = arn.removeprefix("arn:aws:s3:::").split("/", 1)[0]
            assert bucket in names, f"{role.role} names {arn}: not one of the render's buckets {sorted(names)}"
    # moto judges SNS against "*", so the topic scope is checked here, on the render.
    sns = [(a, r) for account in ACCOUNTS for _, a, r in grants_as_rendered(enforced.roles[account])
           if a.lower().startswith("sns:")]
    assert sns and all(r == TOPIC for _, r in sns), f"SNS grants must name the alert topic: {sns}"


def grants_as_rendered(role: IrsaRole) -> list[tuple[str, str, str]]:
    return [(s.get("Sid", ""), a, r) for d in role.documents for s in d["Statement"] if s["Effect"] == "Allow"
            for a in _list(s["Action"]) for r in _list(s["Resource"])]


def test_presigned_urls_are_judged_as_their_signer(enforced: Enforced) -> None:
    """The tracking server hands out presigned URLs (pods download models with them). moto's enforcement
    cannot read them; the audited server judges them as AWS does: as the signer, within its grants."""
    admin = enforced.client()
    artifact, data = enforced.buckets["artifact"], enforced.buckets["data"]
    admin.put_object(Bucket=artifact, Key="mlflow/1/contract-denial/artifacts/MLmodel", Body=b"flavors: {}")
    admin.put_object(Bucket=data, Key="datasets/contract-denial/presigned/data.parquet", Body=b"rows")
    inside = enforced.presigned_get("mlflow", artifact, "mlflow/1/contract-denial/artifacts/MLmodel")
    assert inside.status_code == 200 and inside.content == b"flavors: {}", inside.text
    outside = enforced.presigned_get("mlflow", data, "datasets/contract-denial/presigned/data.parquet")
    assert outside.status_code == 403 and "AccessDenied" in outside.text, outside.text
    control = enforced.presigned_get(None, data, "datasets/contract-denial/presigned/data.parquet")
    assert control.status_code == 200 and control.content == b"rows", control.text


def test_missing_keys_and_head_bucket_need_list_bucket_as_on_aws(enforced: Enforced) -> None:
    """Emulated beyond moto: a missing key is 403 without s3:ListBucket (404 with it), HeadBucket is ListBucket."""
    bucket = enforced.buckets["data"]
    reader, lister = enforced.client("reader"), enforced.client("lister")
    enforced.client().put_object(Bucket=bucket, Key="contract-denial/present", Body=b"x")
    for client in (reader, lister):
        assert code(client.get_object, Bucket=bucket, Key="contract-denial/present") == "ok"
    assert code(reader.get_object, Bucket=bucket, Key="contract-denial/missing") == "AccessDenied"
    assert code(lister.get_object, Bucket=bucket, Key="contract-denial/missing") == "NoSuchKey"  # control
    assert code(reader.head_bucket, Bucket=bucket) == "403"
    assert code(lister.head_bucket, Bucket=bucket) == "ok"  # control


# --- the happy path --------------------------------------------------------------------------------


@pytest.mark.timeout(1200)  # the whole harness flow runs in this test's setup
def test_happy_path_of_every_workload_has_zero_access_denied(enforced: Enforced, happy_path: HappyPath) -> None:
    refused = [d for d in happy_path.decisions if d.outcome != "allowed"]
    assert not refused, "IAM refused requests of the happy path:\n" + "\n".join(
        f"  {d.principal}: {d.action} on {d.resource} -> {d.outcome}" for d in refused)
    assert not happy_path.forbidden, "moto answered 403:\n" + "\n".join(happy_path.forbidden)
    assert happy_path.failure is None, happy_path.failure
    users = {d.user for d in happy_path.decisions}
    assert {enforced.roles[a].user for a in WORKLOADS} <= users, f"a workload made no AWS call: {sorted(users)}"
    alerts = delivered_alerts(enforced)
    assert any(a.get("endpoint") == "churn" for a in alerts), f"no drift alert reached the SNS topic: {alerts}"


def delivered_alerts(enforced: Enforced) -> list[dict[str, Any]]:
    """The monitor's alerts (JSON objects) that reached the queue subscribed to the topic."""
    sqs, found = enforced.client(service="sqs"), []
    while messages := sqs.receive_message(QueueUrl=enforced.queue_url, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            sqs.delete_message(QueueUrl=enforced.queue_url, ReceiptHandle=message["ReceiptHandle"])
            try:
                found.append(json.loads(json.loads(message["Body"])["Message"]))
            except ValueError:
                continue  # test_only_monitoring_may_publish_alerts publishes plain text
    return [a for a in found if isinstance(a, dict)]


@pytest.mark.timeout(1200)
def test_every_rendered_grant_is_used_by_the_happy_path(happy_path: HappyPath) -> None:
    """Least privilege the happy path proves sufficient: a grant nobody used is one too many."""
    assert happy_path.failure is None, "the happy path failed; see its test"
    unused = [line for line in happy_path.report if line.startswith("  unused") and "(kept:" not in line]
    assert not unused, "rendered but never used by the flow:\n" + "\n".join(unused) + \
        "\n\nfull usage:\n" + "\n".join(happy_path.report)


@pytest.mark.timeout(1200)
def test_kms_grants_match_the_s3_calls_of_the_happy_path(enforced: Enforced, rendered: RenderResult,
                                                          happy_path: HappyPath) -> None:
    """moto never calls KMS for SSE-KMS buckets: judged here from the S3 object calls each role made, per
    bucket (S3 Bucket Keys put the bucket ARN in the encryption context a role's grant may be limited to)."""
    assert happy_path.failure is None, "the happy path failed; see its test"
    key = next(m for m in to_manifests(rendered) if m["metadata"]["name"] == "workload-contract")["data"][
        "MLOPS_KMS_KEY_ARN"]
    encryption = rendered.of_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    keys = {r["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"] for e in encryption for r in e.inputs["rules"]}
    assert len(encryption) == len(BUCKETS) and keys == {key}, f"every bucket SSE-KMS with {key}: {keys}"
    wrong = []
    for account in WORKLOADS:
        role = enforced.roles[account]
        uses = {(kms, d.resource.split("/", 1)[0]) for d in happy_path.decisions
                if d.user == role.user and d.outcome == "allowed" for kms in KMS_FOR.get(d.action, set())}
        granted = kms_grants(role, key)
        missing = {(a, b) for a, b in uses if (a, b) not in granted and (a, "*") not in granted}
        excess = {(a, b) for a, b in granted if not any(a == u and b in (v, "*") for u, v in uses)}
        if missing or excess:
            wrong.append(f"{role.role}: missing {sorted(missing)}, not needed {sorted(excess)}")
    assert not wrong, f"KMS grants on {key} (action, bucket in the encryption context):\n" + "\n".join(wrong)


def kms_grants(role: IrsaRole, key: str) -> set[tuple[str, str]]:
    """(kms action, bucket ARN its encryption-context condition admits, or "*") the role's Allows grant on key."""
    found = set()
    for document in role.documents:
        for statement in document["Statement"]:
            if statement["Effect"] != "Allow":
                continue
            context = statement.get("Condition", {}).get("StringEquals", {}).get("kms:EncryptionContext:aws:s3:arn")
            for action in _list(statement["Action"]):
                if action.startswith("kms:") and any(covers(action, r, Decision("", action, key, "allowed"))
                                                     for r in _list(statement["Resource"])):
                    found |= {(action, bucket) for bucket in (_list(context) if context else ["*"])}
    return found


# --- out of scope: denied, beside the admin's control -----------------------------------------------


@pytest.mark.parametrize("key", ["mlflow/1/another-run/artifacts/model/model.pkl", "models/another/model.pkl"])
def test_training_cannot_overwrite_another_models_artifacts(enforced: Enforced, key: str) -> None:
    bucket, admin, training = enforced.buckets["artifact"], enforced.client(), enforced.client("training")
    admin.put_object(Bucket=bucket, Key=key, Body=b"another model")
    assert code(training.put_object, Bucket=bucket, Key=key, Body=b"overwritten") == "AccessDenied"
    assert code(training.create_multipart_upload, Bucket=bucket, Key=key) == "AccessDenied"
    assert admin.get_object(Bucket=bucket, Key=key)["Body"].read() == b"another model"
    assert code(admin.put_object, Bucket=bucket, Key=key, Body=b"overwritten") == "ok"  # control


def test_serving_cannot_read_datasets(enforced: Enforced) -> None:
    bucket, admin, serving = enforced.buckets["data"], enforced.client(), enforced.client("serving")
    key = "datasets/contract-denial/0123abcd/data.parquet"
    admin.put_object(Bucket=bucket, Key=key, Body=b"rows")
    assert code(serving.get_object, Bucket=bucket, Key=key) == "AccessDenied"
    assert code(serving.list_objects_v2, Bucket=bucket, Prefix="datasets/") == "AccessDenied"
    assert code(admin.get_object, Bucket=bucket, Key=key) == "ok"  # control
    assert code(admin.list_objects_v2, Bucket=bucket, Prefix="datasets/") == "ok"


@pytest.mark.parametrize("account", [a for a in WORKLOADS if a != "labeler"])
def test_only_the_labeler_writes_ground_truth(enforced: Enforced, account: str) -> None:
    bucket = enforced.buckets["capture"]
    key = "labels/churn/contract-denial.parquet"
    assert code(enforced.client(account).put_object, Bucket=bucket, Key=key, Body=b"poison") == "AccessDenied"
    assert code(enforced.client("labeler").put_object, Bucket=bucket, Key=key, Body=b"truth") == "ok"  # control
    assert code(enforced.client("labeler").get_object, Bucket=bucket, Key=key) == "AccessDenied"  # write-only


def test_monitoring_cannot_write_artifacts(enforced: Enforced) -> None:
    bucket, admin, monitoring = enforced.buckets["artifact"], enforced.client(), enforced.client("monitoring")
    key = "mlflow/1/contract-denial/artifacts/model/model.pkl"
    assert code(monitoring.put_object, Bucket=bucket, Key=key, Body=b"x") == "AccessDenied"
    assert code(monitoring.create_multipart_upload, Bucket=bucket, Key=key) == "AccessDenied"
    assert code(admin.put_object, Bucket=bucket, Key=key, Body=b"x") == "ok"  # control


@pytest.mark.parametrize("account", ACCOUNTS)
def test_no_role_can_delete_a_bucket(enforced: Enforced, account: str) -> None:
    role, admin = enforced.client(account), enforced.client()
    for bucket in enforced.buckets.values():
        assert code(role.delete_bucket, Bucket=bucket) == "AccessDenied", f"{account} on {bucket}"
        # Control: the admin's same request passes IAM and reaches S3 (the marker object keeps the bucket).
        assert code(admin.delete_bucket, Bucket=bucket) == "BucketNotEmpty"


@pytest.mark.parametrize("account", ACCOUNTS)
def test_no_role_can_delete_objects_outside_its_prefixes(enforced: Enforced, account: str) -> None:
    role, admin = enforced.client(account), enforced.client()
    wrong = []
    for kind, bucket in enforced.buckets.items():
        for prefix in PREFIXES:
            key = f"{prefix}contract-denial/delete-{account}"
            admin.put_object(Bucket=bucket, Key=key, Body=b"x")
            expected = "ok" if (kind, prefix) in DELETES.get(account, set()) else "AccessDenied"
            if code(role.delete_object, Bucket=bucket, Key=key) != expected:
                wrong.append(f"{kind} {key}: expected {expected}")
            assert code(admin.delete_object, Bucket=bucket, Key=key) == "ok"  # control
    assert not wrong, f"{account}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("account", ACCOUNTS)
def test_no_role_can_destroy_object_history(enforced: Enforced, account: str) -> None:
    """Versioning is the recovery path for every bucket: nobody but an operator deletes a version."""
    role, admin = enforced.client(account), enforced.client()
    for bucket in enforced.buckets.values():
        for prefix in PREFIXES:
            key = f"{prefix}contract-denial/version-{account}"
            version = admin.put_object(Bucket=bucket, Key=key, Body=b"x")["VersionId"]
            assert code(role.delete_object, Bucket=bucket, Key=key, VersionId=version) == "AccessDenied", \
                f"{account} destroyed {bucket}/{key}?versionId={version}"
            assert code(admin.delete_object, Bucket=bucket, Key=key, VersionId=version) == "ok"  # control


def test_only_monitoring_may_publish_alerts(enforced: Enforced) -> None:
    """Action-level only: moto judges SNS calls against "*", the topic scope is checked on the render."""
    for account in ACCOUNTS:
        expected = "ok" if account == "monitoring" else "AccessDenied"
        sns = enforced.client(account, service="sns")
        assert code(sns.publish, TopicArn=TOPIC, Message="x") == expected, account
    assert code(enforced.client(service="sns").publish, TopicArn=TOPIC, Message="x") == "ok"  # control
