"""Prod keeps its data with everything that holds or decrypts it; access logs, capture expiry, RDS
monitoring (issue 13, items 7 and 9)."""

from __future__ import annotations

import json

import pytest

from components.render import RenderResult
from policies.rules import PROD_KEPT_TYPES, STATEFUL_TYPES

KEPT = (PROD_KEPT_TYPES | STATEFUL_TYPES) - {"kubernetes:apps/v1:StatefulSet",
                                            "kubernetes:core/v1:PersistentVolumeClaim"}
RDS = "aws:rds/instance:Instance"


def test_prod_protects_and_retains_everything_that_holds_or_decrypts_data(rendered: dict[str, RenderResult]) -> None:
    result = rendered["prod"]
    kept = [r for r in result.resources if r.type in KEPT]
    names = {r.name for r in kept}
    # The keys, logs and settings the issue names, among them.
    assert {"database-key", "cluster-secrets-key", "storage-key", "registry-key", "cluster-logs",
            "network-flow-logs", "storage-data-encryption", "storage-data-public-access", "storage-data-policy",
            "storage-capture-lifecycle", "storage-access-logs", "database-postgres", "cluster-eks"} <= names
    loose = [r.name for r in kept if not (r.protect and r.retain_on_delete)]
    assert loose == []


@pytest.mark.parametrize("stack", ["dev", "staging", "ci"])
def test_other_stacks_stay_rebuildable(rendered: dict[str, RenderResult], stack: str) -> None:
    kept = [r.name for r in rendered[stack].resources if r.protect or r.retain_on_delete]
    # Only the key of RDS's final snapshot (taken everywhere but ci): a snapshot is useless without it.
    assert kept == ([] if stack == "ci" else ["database-key"])


def _lifecycle(result: RenderResult, role: str) -> dict[str, dict]:
    config = result.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", f"storage-{role}-lifecycle")
    return {rule["id"]: rule for rule in config.inputs["rules"]}


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "ci"])
def test_inference_capture_expires(rendered: dict[str, RenderResult], stack: str) -> None:
    rules = _lifecycle(rendered[stack], "capture")
    assert rules["expire-captures"]["filter"] == {"prefix": "captures/"}
    assert rules["expire-captures"]["expiration"]["days"] == 90  # storage.captureRetentionDays default
    assert "expire-noncurrent-versions" in rules
    assert "expire-captures" not in _lifecycle(rendered[stack], "data")  # datasets do not expire


@pytest.mark.parametrize(("stack", "logged"), [("dev", False), ("ci", False), ("staging", True), ("prod", True)])
def test_access_logs_in_prod_and_staging(rendered: dict[str, RenderResult], stack: str, logged: bool) -> None:
    result = rendered[stack]
    logging = result.of_type("aws:s3/bucketLogging:BucketLogging")
    if not logged:
        assert logging == []
        return
    assert sorted(r.name for r in logging) == ["storage-artifacts-logging", "storage-capture-logging",
                                               "storage-data-logging"]
    log_bucket = result.one("aws:s3/bucket:Bucket", "storage-access-logs")
    assert all(r.inputs["targetBucket"] == f"{log_bucket.name}-id" for r in logging)
    encryption = result.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                            "storage-access-logs-encryption")
    # S3's log delivery cannot write with a KMS key: SSE-S3.
    assert encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    policy = json.loads(result.one("aws:s3/bucketPolicy:BucketPolicy", "storage-access-logs-policy").inputs["policy"])
    delivery = next(s for s in policy["Statement"] if s.get("Sid") == "S3ServerAccessLogs")
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"} and delivery["Action"] == "s3:PutObject"
    assert delivery["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"
    assert any(s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
               for s in policy["Statement"])
    expiry = _lifecycle_of(result, "storage-access-logs-lifecycle")
    assert expiry["expire-access-logs"]["expiration"]["days"] == 365


def _lifecycle_of(result: RenderResult, name: str) -> dict[str, dict]:
    config = result.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", name)
    return {rule["id"]: rule for rule in config.inputs["rules"]}


@pytest.mark.parametrize(("stack", "interval"), [("dev", 0), ("staging", 60), ("prod", 60)])
def test_rds_enhanced_monitoring(rendered: dict[str, RenderResult], stack: str, interval: int) -> None:
    result = rendered[stack]
    db = result.one(RDS)
    assert db.inputs.get("monitoringInterval", 0) == interval
    if interval:
        role = result.one("aws:iam/role:Role", "database-monitoring")
        assert "monitoring.rds.amazonaws.com" in role.inputs["assumeRolePolicy"]
        assert db.inputs["monitoringRoleArn"].endswith("/database-monitoring")
    else:
        assert not db.inputs.get("monitoringRoleArn")
