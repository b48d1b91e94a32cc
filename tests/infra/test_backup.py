"""Backups of the tracking database: RDS final snapshots and restores, the in-cluster backup CronJob.

Rendered stacks are checked for what each kind gets; the backup and restore containers' scripts run
as rendered (command and env, with the cluster's names pointed at a moto S3 server and a directory for
the emptyDir) to show the encryption, the checksum and the retention. The server enforces IAM and the
scripts sign as a user holding exactly the rendered MinIO policy of `mlops-backup` (same grammar), so
every S3 call they make must be granted by it. The whole dump-restore-upgrade path against the local
Postgres is tests/drills/test_recreate.py.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from components import backup
from components.config import ConfigError, EnvironmentConfig
from components.credentials import minio_secret
from components.render import RenderResult, load_stack_config, render_stack, stack_file
from tests.contract.iam import EnforcingS3, IrsaRole, enforce_iam, s3_arns
from tests.infra.conftest import ADMIN_PASSWORD
from tests.infra.helpers import env_of, manifest, manifests, pod_spec
from workloads import layout
from workloads.devstack import recreate

RDS = "aws:rds/instance:Instance"
PASSPHRASE = "a-long-enough-backup-passphrase"
BUCKET = "mlops-local-artifacts"
PREFIX = layout.tracking_backup_prefix()
S3_SECRET = minio_secret(backup.S3_ACCOUNT)  # minio-user-backup


def render_with(stack: str, database: dict[str, Any], secrets: dict[str, str] | None = None) -> RenderResult:
    config = copy.deepcopy(load_stack_config(stack_file(stack)))
    tracking = config.setdefault("mlops-platform:tracking", {})
    tracking["database"] = {**tracking.get("database", {}), **database}
    return render_stack(stack, config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD, **(secrets or {})})


# --- RDS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_rds_takes_a_unique_final_snapshot_and_keeps_its_key(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    db = result.one(RDS).inputs
    assert db["skipFinalSnapshot"] is False
    suffix = result.one("random:index/randomId:RandomId", "database-final-snapshot")
    assert db["finalSnapshotIdentifier"] == f"mlops-{stack}-tracking-final-a1b2c3d4"  # the mocks' RandomId hex
    assert suffix.parent and suffix.parent.endswith("mlops:database:Database::database")
    key = result.one("aws:kms/key:Key", "database-key")
    assert key.retain_on_delete, "a final snapshot outlives the stack: its key must too"
    assert db["kmsKeyId"].endswith(":key/database-key") and "snapshotIdentifier" not in db


def test_ci_takes_no_final_snapshot_and_every_other_kind_does() -> None:
    base = {"name": "x", "tags": {"owner": "o", "costCenter": "c"}}
    kinds = {k: EnvironmentConfig.model_validate({**base, "kind": k}).rds_final_snapshot
             for k in ("dev", "staging", "prod", "ci")}
    assert kinds == {"dev": True, "staging": True, "prod": True, "ci": False}


def test_restore_from_snapshot_creates_rds_from_it_with_the_snapshots_key() -> None:
    snapshot = "mlops-dev-tracking-final-0badc0de"
    db = render_with("dev", {"restoreFromSnapshot": snapshot}).one(RDS).inputs
    assert db["snapshotIdentifier"] == snapshot
    # RDS restores with the snapshot's key and cannot change it; naming another would replace the instance.
    assert db.get("kmsKeyId") is None and db["storageEncrypted"] is True
    assert db["skipFinalSnapshot"] is False  # the recreated environment keeps its own final snapshot


@pytest.mark.parametrize("snapshot", ["rds:mlops-dev-abc-2026-12-01-03-05",
                                      "arn:aws:rds:us-east-1:123456789012:snapshot:mlops-dev-final"])
def test_automated_snapshots_and_arns_are_accepted(snapshot: str) -> None:
    assert render_with("dev", {"restoreFromSnapshot": snapshot}).one(RDS).inputs["snapshotIdentifier"] == snapshot


@pytest.mark.parametrize(("stack", "database", "expected"), [
    ("dev", {"restoreFromSnapshot": "9-starts-with-a-digit"},
     'mlops-platform:tracking.database.restoreFromSnapshot: "9-starts-with-a-digit"'),
    ("local", {"restoreFromSnapshot": "mlops-local-final"},
     "mlops-platform:tracking.database.restoreFromSnapshot: 'mlops-local-final' applies to RDS only"),
    ("dev", {"backup": {"schedule": "0 1 * * *"}},
     "mlops-platform:tracking.database.backup: {'schedule': '0 1 * * *'} applies to the in-cluster Postgres of "
     "cloud: none only"),
    ("local", {"backup": {"retentionDays": 0}},
     "mlops-platform:tracking.database.backup.retentionDays: 0"),
    ("local", {"backup": {"schedule": "every night"}}, "mlops-platform:tracking.database.backup.schedule"),
])
def test_backup_keys_only_where_they_do_something(stack: str, database: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        render_with(stack, database)
    assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_in_cluster_backups_need_a_long_passphrase() -> None:
    config = copy.deepcopy(load_stack_config(stack_file("local")))
    del config["mlops-platform:backupPassphrase"]
    with pytest.raises(ConfigError, match="mlops-platform:backupPassphrase: missing; set it with"):
        render_stack("local", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    with pytest.raises(ConfigError, match="mlops-platform:backupPassphrase: is shorter than 16 characters"):
        render_with("local", {}, secrets={"backupPassphrase": "too-short"})
    off = render_stack("local", config={**config, "mlops-platform:tracking": {"database": {"backup": {
        "enabled": False}}}}, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    assert not [m for m in manifests(off, "CronJob") if m["metadata"]["name"].startswith("tracking-")]


# --- the in-cluster backup CronJob and restore template --------------------------------------------------


def test_only_cloud_none_gets_the_backup_cronjob(rendered: dict[str, RenderResult]) -> None:
    for stack, result in rendered.items():
        names = {m["metadata"]["name"] for m in manifests(result, "CronJob")}
        assert ({backup.BACKUP, backup.RESTORE} <= names) is (stack == "local"), stack


def test_backup_cronjob_as_rendered(rendered: dict[str, RenderResult]) -> None:
    result = rendered["local"]
    env = EnvironmentConfig.model_validate({"name": "local", "kind": "local", "cloud": "none",
                                            "tags": {"owner": "o", "costCenter": "c"},
                                            "cluster": {"mode": "kubeconfig"}})
    cronjob = manifest(result, "CronJob", backup.BACKUP)
    assert cronjob["spec"]["schedule"] == env.tracking.database.backup.schedule
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(cronjob)
    (dump,), (upload,) = spec["initContainers"], spec["containers"]
    assert dump["image"] == env.tracking.database.image  # pg_dump of the server's own major version
    assert upload["image"].startswith(env.workloads.image)
    assert env_of(upload)["BACKUP_RETENTION_DAYS"] == "14"
    assert env_of(upload)["BACKUP_PREFIX"] == PREFIX and env_of(upload)["BACKUP_BUCKET"] == BUCKET
    assert env_of(upload)["BACKUP_PASSPHRASE"] == {"secretKeyRef": {"name": backup.BACKUP, "key": "passphrase"}}
    secret = result.one("kubernetes:core/v1:Secret", "backup-passphrase")
    assert "backupPassphrase" in secret.inputs["stringData"]["value"]["passphrase"]  # the render's placeholder
    for container in (dump, upload):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["runAsUser"] == 10001
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"


def test_restore_template_is_suspended(rendered: dict[str, RenderResult]) -> None:
    cronjob = manifest(rendered["local"], "CronJob", backup.RESTORE)
    assert cronjob["spec"]["suspend"] is True
    spec = pod_spec(cronjob)
    assert [c["name"] for c in spec["initContainers"]] == ["fetch"] and spec["containers"][0]["name"] == "restore"


def test_backup_pods_may_reach_postgres(rendered: dict[str, RenderResult]) -> None:
    policy = manifest(rendered["local"], "NetworkPolicy", "postgres-backup-ingress")["spec"]
    for name in (backup.BACKUP, backup.RESTORE):
        pod_labels = manifest(rendered["local"], "CronJob", name)["spec"]["jobTemplate"]["spec"]["template"][
            "metadata"]["labels"]
        assert policy["ingress"][0]["from"] == [{"podSelector": {"matchLabels": pod_labels}}]
    postgres = manifest(rendered["local"], "StatefulSet", "postgres")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == postgres


def test_recreate_runs_the_rendered_containers(rendered: dict[str, RenderResult]) -> None:
    """`mlops env recreate local` and the drill run these exact commands and variables."""
    result = rendered["local"]
    ours = recreate.containers(backup.Names("h", "postgres-credentials", backup.BACKUP, BUCKET, "e", S3_SECRET))
    rendered_containers = {}
    for name in (backup.BACKUP, backup.RESTORE):
        spec = pod_spec(manifest(result, "CronJob", name))
        rendered_containers.update({c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]})
    for name in ("dump", "upload", "fetch", "restore"):
        mine, theirs = ours[name], rendered_containers[name]
        assert mine["command"] == theirs["command"], name
        assert [e["name"] for e in mine["env"]] == [e["name"] for e in theirs["env"]], name
        assert [e.get("valueFrom") for e in mine["env"]] == [e.get("valueFrom") for e in theirs["env"]], name
        assert mine["envFrom"] == theirs["envFrom"], name
    migrate = next(c for c in pod_spec(manifest(result, "Deployment", "mlflow"))["initContainers"])
    assert ours["migrate"]["command"] == migrate["command"]


# --- the backup's MinIO user ------------------------------------------------------------------------


def minio_policies(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {k.removesuffix(".json"): json.loads(v)
            for k, v in manifest(result, "ConfigMap", "minio-policies")["data"].items()}


def test_the_backup_user_reaches_backups_of_the_artifact_bucket_only(rendered: dict[str, RenderResult]) -> None:
    result = rendered["local"]
    policies = minio_policies(result)
    dumps = f"arn:aws:s3:::{BUCKET}/{PREFIX}*"
    assert s3_arns(policies["backup"]) == {f"arn:aws:s3:::{BUCKET}", dumps}
    assert all(s["Effect"] == "Allow" for s in policies["backup"]["Statement"])
    (listing,) = [s for s in policies["backup"]["Statement"] if s["Resource"] == [f"arn:aws:s3:::{BUCKET}"]]
    # moto cannot judge conditions (tests/contract/iam.py): check the prefix the scripts list with here.
    (pattern,) = listing["Condition"]["StringLike"]["s3:prefix"]
    upload = pod_spec(manifest(result, "CronJob", backup.BACKUP))["containers"][0]
    assert fnmatch.fnmatchcase(env_of(upload)["BACKUP_PREFIX"], pattern)
    assert not fnmatch.fnmatchcase(layout.MLFLOW_ARTIFACTS, pattern) and not fnmatch.fnmatchcase("", pattern)
    # No other MinIO user's object grants reach backups/ (only root does).
    for account, document in policies.items():
        if account != "backup":
            assert not [arn for arn in s3_arns(document) if fnmatch.fnmatchcase(f"arn:aws:s3:::{BUCKET}/{PREFIX}x",
                                                                               arn)], account


# --- the scripts, run as rendered against an S3 server that enforces the backup user's policy ------


@pytest.fixture(scope="module")
def s3(rendered: dict[str, RenderResult], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(server, admin client, the backup user's keys): the user holds exactly the rendered MinIO policy."""
    server = EnforcingS3(tmp_path_factory.mktemp("iam"))
    try:
        role = IrsaRole("minio-backup", "mlops-local", backup.S3_ACCOUNT,
                        (minio_policies(rendered["local"])["backup"],))
        keys = enforce_iam(server, {backup.S3_ACCOUNT: role})[backup.S3_ACCOUNT]
        client = server.client()  # the admin, for the tests' own setup
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield server, client, keys
    finally:
        server.stop()


def run(name: str, s3: Any, scratch: Path, passphrase: str = PASSPHRASE, **extra: str) -> str:
    server, _, keys = s3
    names = backup.Names("127.0.0.1", "postgres-credentials", backup.BACKUP, BUCKET, server.url, S3_SECRET)
    secrets = {backup.BACKUP: {"passphrase": passphrase}, S3_SECRET: keys}
    local = {"BACKUP_FILE": str(scratch / "tracking.dump"), "HOME": str(scratch), **extra}
    return recreate.run_container(recreate.containers(names, retention_days=7)[name], secrets, local, timeout=120)


def test_the_backup_user_is_refused_outside_backups(s3: Any) -> None:
    """The enforcement is on: the same keys the scripts use may not touch MLflow's artifacts."""
    server, client, keys = s3
    artifact = f"{layout.MLFLOW_ARTIFACTS}1/run/artifacts/model.pkl"
    client.put_object(Bucket=BUCKET, Key=artifact, Body=b"model")
    user = server.client(keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])
    before = len(server.decisions())
    for call in (lambda: user.get_object(Bucket=BUCKET, Key=artifact),
                 lambda: user.put_object(Bucket=BUCKET, Key=f"{layout.MLFLOW_ARTIFACTS}x", Body=b"x"),
                 lambda: user.delete_object(Bucket=BUCKET, Key=artifact),
                 lambda: user.put_object(Bucket=BUCKET, Key="backups/other/x", Body=b"x")):
        with pytest.raises(Exception, match="AccessDenied"):
            call()
    denied = [d for d in server.decisions()[before:] if d.user == "irsa-backup" and d.outcome == "denied"]
    assert len(denied) == 4, denied


def test_upload_encrypts_and_fetch_decrypts(s3: Any, tmp_path: Path) -> None:
    _, client, _ = s3
    plain = b"PGDMP" + bytes(range(256)) * 400
    (tmp_path / "tracking.dump").write_bytes(plain)
    output = run("upload", s3, tmp_path)
    key = output.split("uploaded s3://")[1].split()[0].split("/", 1)[1]
    assert key.startswith(PREFIX) and key.endswith(".dump.enc")
    assert not (tmp_path / "tracking.dump").exists(), "the plaintext dump must not outlive its encryption"
    stored = client.get_object(Bucket=BUCKET, Key=key)
    body = stored["Body"].read()
    assert body.startswith(b"Salted__") and b"PGDMP" not in body  # openssl's salted format, no plaintext
    assert stored["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    run("fetch", s3, tmp_path, BACKUP_OBJECT=key)
    assert (tmp_path / "tracking.dump").read_bytes() == plain
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    with pytest.raises(recreate.RecreateError, match="does not decrypt to the dump uploaded"):
        run("fetch", s3, wrong, passphrase="not-the-passphrase-used", BACKUP_OBJECT=key)
    assert not (wrong / "tracking.dump").exists()


def test_fetch_refuses_a_damaged_backup(s3: Any, tmp_path: Path) -> None:
    _, client, _ = s3
    key = f"{PREFIX}29990101T000000Z.dump.enc"  # the newest: what `latest` picks
    client.put_object(Bucket=BUCKET, Key=key, Body=b"Salted__damaged", Metadata={"sha256": "0" * 64})
    try:
        with pytest.raises(recreate.RecreateError, match="SHA-256 .* is not the uploaded 0000"):
            run("fetch", s3, tmp_path)
        assert not (tmp_path / "tracking.dump").exists()
    finally:
        versions = client.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])
        for version in versions:
            client.delete_object(Bucket=BUCKET, Key=key, VersionId=version["VersionId"])


def test_retention_deletes_every_version_of_old_dumps_and_keeps_the_rest(s3: Any, tmp_path: Path) -> None:
    _, client, _ = s3
    old, recent, other = f"{PREFIX}20000101T000000Z.dump.enc", f"{PREFIX}29000101T000000Z.dump.enc", \
        f"{PREFIX}notes.txt"
    for key in (old, old, recent, other):  # `old` twice: two versions
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    (tmp_path / "tracking.dump").write_bytes(b"PGDMP")
    output = run("upload", s3, tmp_path)
    assert "deleted 2 object version(s)" in output, output
    left = {v["Key"] for v in client.list_object_versions(Bucket=BUCKET, Prefix=PREFIX).get("Versions", [])}
    assert old not in left and {recent, other} <= left
