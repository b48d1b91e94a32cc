"""MinIO (cloud: none): a user per service account, scoped like the IRSA roles on AWS.

The root credential (`minio-credentials`) is read by MinIO and by its setup Job only. The Job
creates the buckets, then per account (serving, training, monitoring, the tracking server, the labeler,
the database backup) a policy and a user with it attached. The labeler's Secret `minio-user-labeler` is read by no pod of
the stack: it is handed to the labeling process, the only writer of `labels/<endpoint>/`. The
policies are the very documents the AWS roles get (components/workload_iam.py, tracking.py's artifact policy), without their KMS and SNS statements
(MinIO has neither); so a workload's S3 reach is the same prefix by prefix on both clouds.

Every step is idempotent: `mc mb --ignore-existing`; `mc admin policy create` replaces a policy;
`mc admin user add` sets the secret key of an existing user (a rotated password); an attachment
that is already in effect is not an error (older `mc` releases report it as one). The Job is
replaced, so it runs again, when a password or a policy changes (a checksum on its pod template).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import ServingEndpoint
from components.credentials import S3_ACCOUNTS, S3_KEYS, generated_secret, minio_secret, minio_username
from components.jobs import labels_source
from components.security import container_security_context, pod_security_context, resources, scratch_volume
from components.workload_iam import (
    backup_policy,
    labeler_policy,
    monitoring_policy,
    serving_policy,
    tracking_policy,
    training_policy,
)
from workloads import layout

MC = "mc --config-dir /tmp/mc"
POLICY_MOUNT = "/etc/mlops/minio-policies"


def policy_name(account: str) -> str:
    return minio_username(account)


def policies(buckets: dict[str, str], endpoints: Sequence[ServingEndpoint]) -> dict[str, str]:
    """account -> its policy document, on the buckets named `buckets` (data, artifacts, capture)."""
    arn = {role: f"arn:aws:s3:::{name}" for role, name in buckets.items()}
    labels = [s for e in endpoints if (s := labels_source(e, buckets["capture"]))]
    documents = {
        "serving": serving_policy(arn["capture"], None),
        "training": training_policy(arn["data"], arn["capture"], None),
        "monitoring": monitoring_policy(arn["capture"], arn["data"], None, labels, None),
        "tracking": tracking_policy(arn["artifacts"], None),
        # A policy needs a resource: without a labels source, `labels/` of the capture bucket, which nothing reads.
        "labeler": labeler_policy(labels or [f"s3://{buckets['capture']}/{layout.LABELS}"], None),
        # The in-cluster Postgres's dumps (components/backup.py): backups/tracking/ of the artifact bucket.
        "backup": backup_policy(arn["artifacts"]),
    }
    return {account: documents[account] for account in S3_ACCOUNTS}


def env_name(account: str, part: str) -> str:
    return f"USER_{account.upper()}_{part}"


def setup_script(bucket_names: Sequence[str]) -> str:
    """The setup Job's shell: buckets with versioning, then each account's policy, user and attachment."""
    lines = [
        "set -eu",
        "attach() {  # already attached is fine: older mc releases fail with 'already in effect'",
        f"  out=$({MC} admin policy attach store \"$1\" --user \"$2\" 2>&1) || case \"$out\" in",
        "    *'already in effect'*) ;;",
        "    *) echo \"$out\" >&2; exit 1 ;;",
        "  esac",
        "}",
        f"{MC} alias set store \"$S3_ENDPOINT\" \"$MINIO_ROOT_USER\" \"$MINIO_ROOT_PASSWORD\"",
    ]
    for bucket in bucket_names:
        lines.append(f"{MC} mb --ignore-existing store/{bucket} && {MC} version enable store/{bucket}")
    for account in S3_ACCOUNTS:
        key, secret = f"${env_name(account, 'KEY')}", f"${env_name(account, 'SECRET')}"
        lines += [
            f"{MC} admin policy create store {policy_name(account)} {POLICY_MOUNT}/{account}.json",
            f"{MC} admin user add store \"{key}\" \"{secret}\"",
            f"attach {policy_name(account)} \"{key}\"",
        ]
    return "\n".join(lines) + "\n"


def checksum(root_password: str, passwords: Sequence[str], documents: dict[str, str]) -> str:
    """Changes with any password or policy; salted with the root password, so it tells nothing about them."""
    return hashlib.sha256("\n".join([root_password, *passwords, json.dumps(documents, sort_keys=True)])
                          .encode()).hexdigest()


@dataclass(frozen=True)
class MinioSetup:
    """What the setup Job needs: the store, its root Secret, the buckets, the client image."""

    namespace: pulumi.Input[str]
    endpoint: pulumi.Input[str]
    root_secret: pulumi.Input[str]
    root_password: pulumi.Input[str]
    buckets: dict[str, str]  # role -> bucket name
    endpoints: Sequence[ServingEndpoint]
    client_image: str
    labels: dict[str, str]


def create_users(parent: pulumi.Resource, name: str, setup: MinioSetup,
                 depends_on: Sequence[pulumi.Resource]) -> k8s.batch.v1.Job:
    """Each account's generated password in its Secret, the policies, and the Job that applies both."""
    child = pulumi.ResourceOptions(parent=parent)
    made = [generated_secret(parent, f"{name}-minio-{account}", minio_secret(account), setup.namespace, S3_KEYS,
                             minio_username(account), {**setup.labels, "mlops-platform/minio-user": account})
            for account in S3_ACCOUNTS]
    passwords, secrets = [m.password for m in made], [m.secret for m in made]
    documents = policies(setup.buckets, setup.endpoints)
    config_map = k8s.core.v1.ConfigMap(
        f"{name}-minio-policies",
        metadata={"name": "minio-policies", "namespace": setup.namespace, "labels": setup.labels},
        data={f"{account}.json": document for account, document in documents.items()}, opts=child)
    digest = pulumi.Output.unsecret(pulumi.Output.all(setup.root_password, *passwords).apply(  # salted: see checksum
        lambda v: checksum(v[0], v[1:], documents)))
    return k8s.batch.v1.Job(
        f"{name}-create-buckets",
        metadata={"namespace": setup.namespace, "labels": setup.labels},
        spec={
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                # A changed password or policy changes the template: Pulumi replaces the Job, which runs again.
                "metadata": {"labels": {"app.kubernetes.io/name": "minio-create-buckets"},
                             "annotations": {"mlops-platform/users-checksum": digest}},
                "spec": _setup_pod(setup, config_map.metadata["name"]),
            },
        },
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*depends_on, *secrets]),
    )


def _setup_pod(setup: MinioSetup, policies_config_map: pulumi.Input[str]) -> dict[str, Any]:
    users = [{"name": env_name(account, part), "valueFrom": {"secretKeyRef": {"name": minio_secret(account),
                                                                              "key": key}}}
             for account in S3_ACCOUNTS for part, key in zip(("KEY", "SECRET"), S3_KEYS, strict=True)]
    return {
        "restartPolicy": "OnFailure",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [{
            "name": "create-buckets",
            "image": setup.client_image,
            "command": ["/bin/sh", "-c", setup_script(list(setup.buckets.values()))],
            "env": [{"name": "S3_ENDPOINT", "value": setup.endpoint}, *users],
            # The root credential: only this Job and MinIO itself read it.
            "envFrom": [{"secretRef": {"name": setup.root_secret}}],
            "resources": resources("100m", "128Mi"),
            "securityContext": container_security_context(),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                             {"name": "policies", "mountPath": POLICY_MOUNT, "readOnly": True}],
        }],
        "volumes": [scratch_volume(), {"name": "policies", "configMap": {"name": policies_config_map}}],
    }
