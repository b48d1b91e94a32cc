"""Labels come only from a prefix only the labeler may write (issue 14, section 4), over the rendered stacks.

Every role policy the stack renders (AWS) and every MinIO user's policy (cloud: none) is evaluated
against an object key under `labels/<endpoint>/` of the capture bucket: only the labeler may put it,
the monitor may read it, and the labeler can do nothing else. The config refuses a labels source
outside `labels/<endpoint>/` (the malformed-config table in test_config.py has the one-line errors).
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

import pytest

from components.render import RenderResult
from tests.infra.conftest import AWS_STACKS
from tests.infra.helpers import manifest, pod_spec, workloads
from tests.infra.test_credentials import secret_references

WRITE = ("s3:PutObject", "s3:DeleteObject")


def allowed(document: dict[str, Any], action: str, resource: str) -> bool:
    """Whether an Allow statement grants `action` on `resource` (IAM wildcards; no Deny is rendered)."""
    for s in document["Statement"]:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        assert s["Effect"] == "Allow"
        if any(fnmatchcase(action, a) for a in actions) and any(fnmatchcase(resource, r) for r in resources):
            return True
    return False


def who_may(documents: dict[str, dict[str, Any]], action: str, resource: str) -> set[str]:
    return {name for name, document in documents.items() if allowed(document, action, resource)}


def aws_policies(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.inputs["policy"]) for p in result.of_type("aws:iam/rolePolicy:RolePolicy")}


def label_object(result: RenderResult, endpoint: str = "churn") -> str:
    return f"arn:aws:s3:::{result.outputs['capture_bucket']}/labels/{endpoint}/2024-06-01.parquet"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_only_the_labeler_role_may_write_labels(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    policies, key = aws_policies(result), label_object(result)
    for action in WRITE:
        assert who_may(policies, action, key) == {"jobs-labeler-irsa"}, action
    assert who_may(policies, "s3:GetObject", key) == {"jobs-monitoring-irsa"}  # the monitor reads, nothing else
    # serving writes its captures, never next to the labels
    assert allowed(policies["serving-irsa"], "s3:PutObject", key.replace("/labels/", "/captures/"))


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_the_labeler_writes_its_endpoints_labels_and_nothing_else(rendered: dict[str, RenderResult],
                                                                  stack: str) -> None:
    result = rendered[stack]
    labeler = aws_policies(result)["jobs-labeler-irsa"]
    capture = f"arn:aws:s3:::{result.outputs['capture_bucket']}"
    s3 = [s for s in labeler["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert [(sorted(s["Action"]), s["Resource"]) for s in s3] == [
        (["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:PutObject"], [f"{capture}/labels/churn/*"])]
    assert not allowed(labeler, "s3:PutObject", f"{capture}/labels/churn-eu/x.csv")  # another endpoint's
    assert not allowed(labeler, "s3:GetObject", label_object(result))
    kms = [s for s in labeler["Statement"] if s not in s3]
    assert {a for s in kms for a in s["Action"]} <= {"kms:Decrypt", "kms:GenerateDataKey"}
    assert all(s["Condition"]["StringEquals"]["kms:EncryptionContext:aws:s3:arn"] == [capture] for s in kms)
    account = manifest(result, "ServiceAccount", "labeler")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert account["automountServiceAccountToken"] is False


def test_with_minio_only_the_labeler_user_may_write_labels(rendered: dict[str, RenderResult]) -> None:
    result = rendered["local"]
    documents = {name.removesuffix(".json"): json.loads(text)
                 for name, text in manifest(result, "ConfigMap", "minio-policies")["data"].items()}
    key = label_object(result)
    for action in WRITE:
        assert who_may(documents, action, key) == {"labeler"}, action
    assert who_may(documents, "s3:GetObject", key) == {"monitoring"}
    assert who_may(documents, "s3:PutObject", key.replace("/labels/churn/", "/captures/churn/")) == {"serving"}
    # The labeler's credential exists for the labeling process; no pod of the stack reads it.
    assert manifest(result, "Secret", "minio-user-labeler")["stringData"]["AWS_ACCESS_KEY_ID"] == "mlops-labeler"
    readers = [w["metadata"]["name"] for w in workloads(result) if "minio-user-labeler" in
               secret_references(pod_spec(w))]
    assert readers == ["storage-create-buckets"]  # the setup Job, which creates the user
