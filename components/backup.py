"""Backups of the in-cluster Postgres (`cloud: none`): a CronJob that dumps, encrypts and uploads.

CronJob `tracking-backup` on `tracking.database.backup.schedule`, one pod:
1. init container `dump`, the Postgres image the database runs (so pg_dump's major version is
   the server's): `pg_dump --format=custom` of the tracking database (runs, registry, auth tables)
   to an emptyDir;
2. container `upload`, the workload image (python, boto3, and the `openssl` CLI that Debian's
   ca-certificates brings into the python:slim base): encrypts the dump with
   `openssl enc -aes-256-cbc -pbkdf2` under the stack secret `backupPassphrase` (a Secret here),
   uploads it to `s3://<artifact bucket>/backups/tracking/<UTC stamp>.dump.enc` (workloads/layout.py:
   outside MLflow's artifact root) with its and the dump's SHA-256 as object metadata, then deletes every version
   of the dumps older than `retentionDays`, never the newest.

The restore path is a suspended CronJob `tracking-restore` used as a Job template (like the training
templates; README "Backups and recreation" has the steps): init container `fetch` downloads the newest
dump (or `BACKUP_OBJECT`), checks its SHA-256, decrypts it and checks the dump's own SHA-256 (so a
wrong passphrase is an error, not noise); container `restore` replaces the
database's `public` schema with the dump in one transaction (psql `--single-transaction`: a failed
restore changes nothing). The tracking server's init container then upgrades a dump from an older
MLflow to the image's schema (components/migrations.py). The checksums catch a damaged object and a
wrong passphrase, not a forged object (CBC has no MAC, and the metadata sits next to the object): the
bucket's access control is what keeps dumps authentic: both Jobs reach MinIO as the user `mlops-backup`
(Secret `minio-user-backup`), whose policy covers `backups/tracking/` only (list with that prefix, put,
get, delete a version), and no other workload's policy covers `backups/`.

The scripts are plain text in the rendered manifests; `mlops env recreate local`
(workloads/devstack/recreate.py) runs these same containers as local processes, and
tests/drills/test_recreate.py runs them against the local Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import EnvironmentConfig, Secrets
from components.credentials import minio_secret
from components.database import LABELS as POSTGRES_LABELS
from components.database import PORT as POSTGRES_PORT
from components.security import container_security_context, pod_security_context, resources, scratch_volume
from workloads import layout

BACKUP = "tracking-backup"
RESTORE = "tracking-restore"
LABELS = {"app.kubernetes.io/name": BACKUP, "app.kubernetes.io/part-of": "mlops-platform"}
PASSPHRASE_SECRET_KEY = "passphrase"
DUMP_DIR = "/backup"
DUMP_FILE = f"{DUMP_DIR}/tracking.dump"
S3_REGION = "us-east-1"  # MinIO's region
S3_ACCOUNT = "backup"  # its MinIO user: backups/tracking/ of the artifact bucket only (workload_iam.backup_policy)
# Never fires: the restore template is suspended; a schedule is still required by the CronJob schema.
TEMPLATE_SCHEDULE = "@yearly"

# Decrypt by hand: openssl enc -d -aes-256-cbc -pbkdf2 -iter 600000 -md sha256 -in X.dump.enc -out X.dump
OPENSSL = ["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-iter", "600000", "-md", "sha256", "-salt",
           "-pass", "env:BACKUP_PASSPHRASE"]

# SHA-256 of a file, in both scripts.
_SHA256 = """\
def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
"""

UPLOAD_SCRIPT = f"""\
import datetime, hashlib, os, re, subprocess
import boto3
{_SHA256}
source, bucket, prefix = os.environ["BACKUP_FILE"], os.environ["BACKUP_BUCKET"], os.environ["BACKUP_PREFIX"]
now = datetime.datetime.now(datetime.timezone.utc)
encrypted, dump_digest = source + ".enc", sha256(source)
subprocess.run({OPENSSL!r} + ["-e", "-in", source, "-out", encrypted], check=True)
os.remove(source)  # the plaintext dump leaves the emptyDir as soon as it is encrypted
key, digest = f"{{prefix}}{{now:%Y%m%dT%H%M%SZ}}.dump.enc", sha256(encrypted)
s3 = boto3.client("s3")
s3.upload_file(encrypted, bucket, key, ExtraArgs={{"Metadata": {{"sha256": digest, "dump-sha256": dump_digest}}}})
print(f"uploaded s3://{{bucket}}/{{key}} ({{os.path.getsize(encrypted)}} bytes, sha256 {{digest}})")
cutoff = now - datetime.timedelta(days=int(os.environ["BACKUP_RETENTION_DAYS"]))
expired = []
for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
        stamp = re.fullmatch(r"([0-9]{{8}}T[0-9]{{6}}Z)[.]dump[.]enc", item["Key"][len(prefix):])
        if stamp and item["Key"] != key and datetime.datetime.strptime(
                stamp.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc) < cutoff:
            expired.append({{"Key": item["Key"], "VersionId": item["VersionId"]}})
for item in expired:  # every version: a versioned bucket would otherwise keep them
    s3.delete_object(Bucket=bucket, **item)
print(f"retention: deleted {{len(expired)}} object version(s) older than {{cutoff:%Y-%m-%dT%H:%M}}Z")
"""

FETCH_SCRIPT = f"""\
import hashlib, os, re, subprocess, sys
import boto3
{_SHA256}
bucket, prefix, target = os.environ["BACKUP_BUCKET"], os.environ["BACKUP_PREFIX"], os.environ["BACKUP_FILE"]
wanted = os.environ.get("BACKUP_OBJECT") or "latest"
s3 = boto3.client("s3")
if wanted == "latest":
    keys = sorted(o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                  for o in page.get("Contents", []) if re.fullmatch(r"[0-9T]{{15}}Z[.]dump[.]enc", o["Key"][len(prefix):]))
    if not keys:
        sys.exit(f"no backup under s3://{{bucket}}/{{prefix}}")
    key = keys[-1]
else:
    key = wanted if wanted.startswith(prefix) else prefix + wanted
encrypted = target + ".enc"
s3.download_file(bucket, key, encrypted)
expected = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
if sha256(encrypted) != expected.get("sha256"):
    sys.exit(f"s3://{{bucket}}/{{key}}: SHA-256 {{sha256(encrypted)}} is not the uploaded {{expected.get('sha256')}}")
decrypted = subprocess.run({OPENSSL!r} + ["-d", "-in", encrypted, "-out", target]).returncode == 0
os.remove(encrypted)
# openssl may fail on the padding or, CBC having no MAC, decrypt a wrong passphrase to noise: no file is left.
if not decrypted or sha256(target) != expected.get("dump-sha256"):
    if os.path.exists(target):
        os.remove(target)
    sys.exit(f"s3://{{bucket}}/{{key}}: does not decrypt to the dump uploaded (wrong passphrase?)")
print(f"fetched and decrypted s3://{{bucket}}/{{key}}")
"""

# Generated to a file first (a damaged dump fails before the database is touched), then applied with the
# schema drop in one transaction: tables a newer MLflow created in the target cannot survive next to the dump.
RESTORE_SCRIPT = """\
pg_restore --no-owner --no-privileges --file="$RESTORE_SQL" "$BACKUP_FILE"
psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --single-transaction \\
  --command='DROP SCHEMA IF EXISTS public CASCADE' --command='CREATE SCHEMA public' --file="$RESTORE_SQL"
rm -f "$RESTORE_SQL"
echo "restored database $PGDATABASE from $BACKUP_FILE"
"""


@dataclass(frozen=True)
class BackupArgs:
    namespace: pulumi.Input[str]
    schedule: str
    retention_days: int
    database_image: str  # the server's own image: pg_dump/pg_restore of its major version
    workload_image: str  # python, boto3, openssl
    database_host: pulumi.Input[str]
    database_secret: pulumi.Input[str]  # POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB
    passphrase: pulumi.Input[str]  # a Pulumi secret
    bucket: pulumi.Input[str]  # the artifact bucket
    s3_endpoint: pulumi.Input[str]
    s3_credentials_secret: pulumi.Input[str]  # the backup's own MinIO user's Secret (`minio-user-backup`)
    scratch_size: str  # the emptyDir holding one dump

    @classmethod
    def of(cls, env: EnvironmentConfig, secrets: Secrets, namespace: pulumi.Input[str], *,
           database_host: pulumi.Input[str], database_secret: pulumi.Input[str] | None, bucket: pulumi.Input[str],
           s3_endpoint: pulumi.Input[str] | None, s3_credentials_secret: pulumi.Input[str] | None) -> BackupArgs:
        """`s3_credentials_secret`: storage's root Secret name, resolving once the setup Job created every
        MinIO user; only that moment is used: the pods read the backup user's Secret, never the root one."""
        if secrets.backup_passphrase is None or database_secret is None or s3_endpoint is None \
                or s3_credentials_secret is None:
            raise ValueError("in-cluster backups need the in-cluster Postgres, MinIO and the backupPassphrase secret")
        db = env.tracking.database
        own = pulumi.Output.from_input(s3_credentials_secret).apply(lambda _: minio_secret(S3_ACCOUNT))
        return cls(namespace, db.backup.schedule, db.backup.retention_days, db.image, env.workload_image,
                   database_host, database_secret, secrets.backup_passphrase, bucket, s3_endpoint, own,
                   db.volume_size)


@dataclass(frozen=True)
class Names:
    """What the containers refer to: Secrets, hosts, the bucket (rendered, or local for recreate.py)."""

    database_host: Any
    database_secret: Any
    passphrase_secret: Any
    bucket: Any
    s3_endpoint: Any
    s3_credentials_secret: Any


def _database_env(names: Names) -> list[dict[str, Any]]:
    """libpq's variables: the host, and the user, password and database from the Postgres Secret."""
    def ref(key: str) -> dict[str, Any]:
        return {"valueFrom": {"secretKeyRef": {"name": names.database_secret, "key": key}}}
    return [{"name": "PGHOST", "value": names.database_host}, {"name": "PGPORT", "value": str(POSTGRES_PORT)},
            {"name": "PGUSER", **ref("POSTGRES_USER")}, {"name": "PGPASSWORD", **ref("POSTGRES_PASSWORD")},
            {"name": "PGDATABASE", **ref("POSTGRES_DB")}, {"name": "BACKUP_FILE", "value": DUMP_FILE},
            {"name": "HOME", "value": "/tmp"}]


def _bucket_env(names: Names) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The bucket, the dump's prefix, MinIO's endpoint and credentials, the passphrase: env and envFrom."""
    env = [{"name": "BACKUP_FILE", "value": DUMP_FILE},
           {"name": "BACKUP_BUCKET", "value": names.bucket},
           {"name": "BACKUP_PREFIX", "value": layout.tracking_backup_prefix()},
           {"name": "BACKUP_PASSPHRASE", "valueFrom": {"secretKeyRef": {
               "name": names.passphrase_secret, "key": PASSPHRASE_SECRET_KEY}}},
           {"name": "AWS_ENDPOINT_URL_S3", "value": names.s3_endpoint},
           {"name": "AWS_DEFAULT_REGION", "value": S3_REGION},
           {"name": "HOME", "value": "/tmp"}]
    return env, [{"secretRef": {"name": names.s3_credentials_secret}}]


def _container(name: str, image: str, command: list[str], env: list[dict[str, Any]],
               env_from: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "command": command, "env": env,
            "envFrom": env_from or [], "resources": resources("250m", "512Mi"),
            "securityContext": container_security_context(),
            "volumeMounts": [{"name": "dump", "mountPath": DUMP_DIR}, {"name": "tmp", "mountPath": "/tmp"}]}


def dump_container(image: str, names: Names) -> dict[str, Any]:
    command = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file=$(BACKUP_FILE)"]
    return _container("dump", image, command, _database_env(names))


def upload_container(image: str, names: Names, retention_days: int) -> dict[str, Any]:
    env, env_from = _bucket_env(names)
    env.append({"name": "BACKUP_RETENTION_DAYS", "value": str(retention_days)})
    return _container("upload", image, ["python", "-c", UPLOAD_SCRIPT], env, env_from)


def fetch_container(image: str, names: Names) -> dict[str, Any]:
    env, env_from = _bucket_env(names)
    env.append({"name": "BACKUP_OBJECT", "value": "latest"})
    return _container("fetch", image, ["python", "-c", FETCH_SCRIPT], env, env_from)


def restore_container(image: str, names: Names) -> dict[str, Any]:
    env = [*_database_env(names), {"name": "RESTORE_SQL", "value": f"{DUMP_DIR}/restore.sql"}]
    return _container("restore", image, ["sh", "-ec", RESTORE_SCRIPT], env)


def _pod(first: dict[str, Any], second: dict[str, Any], scratch_size: str) -> dict[str, Any]:
    """One Job pod: `first` runs to completion as an init container, then `second`."""
    return {"metadata": {"labels": LABELS}, "spec": {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "initContainers": [first],
        "containers": [second],
        "volumes": [scratch_volume("dump", scratch_size), scratch_volume()],
    }}


class TrackingBackup(pulumi.ComponentResource):
    """The passphrase Secret, the backup CronJob, the restore template, and Postgres admitting them."""

    def __init__(self, name: str, args: BackupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:backup:TrackingBackup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        secret = k8s.core.v1.Secret(
            f"{name}-passphrase",
            metadata={"name": BACKUP, "namespace": args.namespace, "labels": LABELS},
            string_data={PASSPHRASE_SECRET_KEY: args.passphrase},
            opts=child,
        )
        names = Names(args.database_host, args.database_secret, secret.metadata["name"], args.bucket,
                      args.s3_endpoint, args.s3_credentials_secret)
        # The namespace's default-deny admits only the tracking server to Postgres; these pods too.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-postgres-ingress",
            metadata={"name": "postgres-backup-ingress", "namespace": args.namespace, "labels": LABELS},
            spec={"podSelector": {"matchLabels": POSTGRES_LABELS}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": LABELS}}],
                               "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}]}]},
            opts=child,
        )
        backup = _pod(dump_container(args.database_image, names),
                      upload_container(args.workload_image, names, args.retention_days), args.scratch_size)
        restore = _pod(fetch_container(args.workload_image, names),
                       restore_container(args.database_image, names), args.scratch_size)
        self._cronjob(name, BACKUP, args, backup, {"schedule": args.schedule, "startingDeadlineSeconds": 3600})
        self._cronjob(name, RESTORE, args, restore, {"schedule": TEMPLATE_SCHEDULE, "suspend": True}, {
            "mlops-platform/run": f"kubectl scale deployment/mlflow --replicas=0 && kubectl create job "
                                  f"--from=cronjob/{RESTORE} {RESTORE}-$(date +%s)"})
        self.register_outputs({})

    def _cronjob(self, name: str, cronjob: str, args: BackupArgs, pod: dict[str, Any], timing: dict[str, Any],
                 annotations: dict[str, str] | None = None) -> None:
        k8s.batch.v1.CronJob(
            f"{name}-{cronjob}",
            metadata={"name": cronjob, "namespace": args.namespace, "labels": LABELS,
                      "annotations": annotations or {}},
            spec={**timing, "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 3,
                  "failedJobsHistoryLimit": 3,
                  "jobTemplate": {"metadata": {"labels": LABELS}, "spec": {
                      "backoffLimit": 1, "activeDeadlineSeconds": 3 * 3600, "ttlSecondsAfterFinished": 7 * 24 * 3600,
                      "template": pod}}},
            opts=pulumi.ResourceOptions(parent=self),
        )
