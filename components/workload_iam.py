"""The IRSA policies of the workload roles (tracking, serving, training, monitoring, labeler), least privilege;
and, with MinIO only, the in-cluster database backup's.

Object prefixes come from the S3 layout the workloads write (`workloads/layout.py`), so a
role's `Resource` and the keys a workload uses cannot drift apart. The buckets share one KMS
key and use S3 Bucket Keys, whose encryption context is the bucket ARN: each role may use the
key only for the buckets it works with (`kms:EncryptionContext:aws:s3:arn`).

Artifacts never need a workload grant: the tracking server proxies them (`--serve-artifacts`,
components/tracking.py), so training logs and serving loads models through it.
- tracking: reads, writes and deletes (`mlflow gc`) MLflow's artifact root `mlflow/*` only;
- serving: writes `captures/*` of the capture bucket and reads the profile bins capture summarises on
  (`monitoring/profile-bins/*`: decile edges and category names, never the reference's values);
- training: reads the data bucket and writes its `datasets/*` (the dataset version a run trained
  on); reads the retraining data the monitor leaves under `monitoring/*/retrain/*`;
- monitoring: lists and reads `captures/*` and each endpoint's labels source, reads `datasets/*`
  (the reference); reads and writes only `monitoring/*` (lock, cooldown record, retraining data,
  cached reference profiles); publishes to the configured SNS topic;
- labeler: writes (and may delete, to correct) each endpoint's labels source `labels/<endpoint>/*`
  and nothing else; reads nothing. The monitor trusts labels because no other role may write there
  (no other policy's prefix covers `labels/`; config_sections.py keeps every source under it).
- backup (MinIO user only: RDS backs itself up on AWS): the backup and restore Jobs' calls on
  `backups/tracking/*` of the artifact bucket and nothing else (components/backup.py).
No object versions are read (`s3:GetObjectVersion`): every workload reads current objects.
tests/contract/test_iam_enforced.py runs the workloads under exactly these policies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from workloads import layout

LIST = ["s3:ListBucket", "s3:GetBucketLocation"]
READ = ["s3:GetObject"]
WRITE = ["s3:PutObject", "s3:AbortMultipartUpload"]


def _statement(sid: str, actions: list[str], resources: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": sorted(set(resources)), **extra}


def _objects(bucket_arn: str, prefix: str) -> str:
    """`arn:aws:s3:::bucket/<prefix>*`: every object under a layout prefix ('' for the whole bucket)."""
    return f"{bucket_arn}/{prefix}*"


def _kms(key_arn: str | None, *, read: Sequence[str], write: Sequence[str]) -> list[dict[str, Any]]:
    """The bucket key for these buckets only (S3 Bucket Keys: the encryption context is the bucket ARN):
    Decrypt where the role reads or writes (a PutObject decrypts the data key too), GenerateDataKey only
    where it writes."""
    if not key_arn:
        return []

    def use(sid: str, action: str, buckets: Sequence[str]) -> dict[str, Any]:
        return _statement(sid, [action], [key_arn], Condition={
            "StringEquals": {"kms:EncryptionContext:aws:s3:arn": sorted(set(buckets))}})
    return [use("DecryptWithBucketKey", "kms:Decrypt", [*read, *write]),
            *([use("EncryptWithBucketKey", "kms:GenerateDataKey", write)] if write else [])]


def _document(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def tracking_policy(artifact_arn: str, key_arn: str | None) -> str:
    """The artifact proxy's S3 access (IRSA on AWS, its MinIO user otherwise): MLflow's artifact root only."""
    root = _objects(artifact_arn, layout.MLFLOW_ARTIFACTS)
    return _document([
        _statement("ListArtifacts", LIST, [artifact_arn]),
        _statement("ReadArtifacts", READ, [root]),
        # DeleteObject: `mlflow gc` removes the artifacts of deleted runs.
        _statement("WriteArtifacts", [*WRITE, "s3:DeleteObject"], [root]),
        *_kms(key_arn, read=[], write=[artifact_arn]),
    ])


def serving_policy(capture_arn: str, key_arn: str | None) -> str:
    return _document([
        # Capture asks for profile bins the monitor may not have cached yet: on AWS a missing key is
        # 404 only with s3:ListBucket (else 403).
        _statement("ListCaptureBucket", LIST, [capture_arn]),
        _statement("WriteCaptures", WRITE, [_objects(capture_arn, layout.CAPTURES)]),
        _statement("ReadProfileBins", READ, [_objects(capture_arn, layout.PROFILE_BINS)]),
        *_kms(key_arn, read=[], write=[capture_arn]),
    ])


def training_policy(data_arn: str, capture_arn: str, key_arn: str | None) -> str:
    return _document([
        # On AWS a missing key is 404 only with ListBucket (else 403): `mlops train` checks which
        # dataset versions and schemas exist before storing them.
        _statement("ListData", LIST, [data_arn]),
        _statement("ReadData", READ, [_objects(data_arn, "")]),
        # `mlops train` stores the exact dataset it trained on under datasets/<name>/<digest>/.
        _statement("WriteDatasetVersions", WRITE, [_objects(data_arn, layout.DATASETS)]),
        # A retraining Job reads the newest data the monitor left for it (`--data`).
        _statement("ReadRetrainingData", ["s3:GetObject"], [f"{capture_arn}/{layout.retrain_data_key('*', '*')}"]),
        *_kms(key_arn, read=[capture_arn], write=[data_arn]),
    ])


@dataclass(frozen=True)
class LabelsSource:
    """Where the monitor of one endpoint reads ground truth: `s3://bucket/prefix`."""

    uri: str

    @property
    def bucket_arn(self) -> str:
        return f"arn:aws:s3:::{urlparse(self.uri).netloc}"

    @property
    def objects(self) -> str:
        return f"{self.bucket_arn}/{urlparse(self.uri).path.lstrip('/')}*"


def monitoring_policy(capture_arn: str, data_arn: str, key_arn: str | None, labels: Sequence[str],
                      sns_topic_arn: str | None) -> str:
    sources = [LabelsSource(uri) for uri in labels]
    label_buckets = [s.bucket_arn for s in sources]
    statements = [
        # The window and the labels are listed by prefix; the reference is read by its exact key.
        _statement("ListBuckets", LIST, [capture_arn, *label_buckets]),
        _statement("ReadCapturesAndReference", READ, [
            _objects(capture_arn, layout.CAPTURES), _objects(capture_arn, layout.MONITORING),
            _objects(data_arn, layout.DATASETS)]),
        # The retraining lock (conditional put, delete on release), cooldown record, retraining data, profiles.
        _statement("WriteMonitoringState", [*WRITE, "s3:DeleteObject"], [_objects(capture_arn, layout.MONITORING)]),
    ]
    if sources:
        statements.append(_statement("ReadLabels", READ, [s.objects for s in sources]))
    statements += _kms(key_arn, read=[data_arn, *label_buckets], write=[capture_arn])
    if sns_topic_arn:
        statements.append(_statement("PublishAlerts", ["sns:Publish"], [sns_topic_arn]))
    return _document(statements)


def labeler_policy(labels: Sequence[str], key_arn: str | None) -> str:
    """The labeling process's only grant: put (and delete, to correct a file) objects under each endpoint's
    labels source. No read, no list: it learns request ids from its own records, not from the captures."""
    sources = [LabelsSource(uri) for uri in labels]
    return _document([
        _statement("WriteLabels", [*WRITE, "s3:DeleteObject"], [s.objects for s in sources]),
        *_kms(key_arn, read=[], write=[s.bucket_arn for s in sources]),
    ])


def backup_policy(artifact_arn: str) -> str:
    """The backup CronJob's and restore template's MinIO user: exactly the S3 calls of backup.py's scripts,
    on the dumps' prefix of the artifact bucket. Never MLflow's artifact root."""
    prefix = layout.tracking_backup_prefix()
    dumps = _objects(artifact_arn, prefix)
    return _document([
        # fetch lists the dumps to find the newest (ListObjectsV2), upload lists their versions to prune them;
        # both with Prefix=backups/tracking/, so the condition keeps MLflow's keys out of sight.
        _statement("ListDumps", ["s3:ListBucket", "s3:ListBucketVersions"], [artifact_arn],
                   Condition={"StringLike": {"s3:prefix": [f"{prefix}*"]}}),
        # upload_file (PutObject, multipart steps, AbortMultipartUpload when a part fails).
        _statement("WriteDumps", WRITE, [dumps]),
        # fetch: download_file and head_object of the current version (both s3:GetObject).
        _statement("ReadDumps", READ, [dumps]),
        # Retention deletes each expired version by id (never an unversioned DeleteObject).
        _statement("PruneDumps", ["s3:DeleteObjectVersion"], [dumps]),
    ])
