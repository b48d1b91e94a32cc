"""Tracking server and its database, asserted per stack."""

from __future__ import annotations

import json
import re

import pytest

from components.migrations import CONTAINER as MIGRATE
from components.migrations import LOCK_KEY
from components.mlflow_users import CONTAINER as PROVISION
from components.render import RenderResult
from components.tracking import CHECKSUM_ANNOTATION, source_regex
from tests.infra.conftest import ALL_STACKS, AWS_STACKS
from tests.infra.helpers import env_of, manifest, manifests, pod_spec

RDS = "aws:rds/instance:Instance"


def server(result: RenderResult) -> dict:
    return manifest(result, "Deployment", "mlflow")


def container(result: RenderResult) -> dict:
    return pod_spec(server(result))["containers"][0]


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_basic_auth_app_with_admin_from_secrets(rendered: dict[str, RenderResult], stack: str) -> None:
    c = container(rendered[stack])
    assert arg(c["command"], "--app-name") == "basic-auth"
    env = env_of(c)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"secretKeyRef": {"name": "mlflow-server", "key": "admin-password"}}
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_auth_database_is_the_same_postgres(rendered: dict[str, RenderResult], stack: str) -> None:
    secret = manifest(rendered[stack], "Secret", "mlflow-server")["stringData"]
    assert re.search(r"^database_uri = postgresql\+psycopg2://", secret["basic_auth.ini"], re.M)
    # configparser's escaping of `%` (a percent-encoded password) is the only difference.
    assert f"database_uri = {secret['backend-store-uri'].replace('%', '%%')}" in secret["basic_auth.ini"]
    assert "admin_password" not in secret["basic_auth.ini"]
    # Nobody sees what they were not granted (components/mlflow_users.py).
    assert re.search(r"^default_permission = NO_PERMISSIONS$", secret["basic_auth.ini"], re.M)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_serves_artifacts_to_the_artifact_bucket(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    command = container(result)["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    assert arg(command, "--artifacts-destination") == f"s3://{result.outputs['artifact_bucket']}/mlflow"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_allowed_hosts_are_service_and_ingress_names(rendered: dict[str, RenderResult], stack: str) -> None:
    hosts = arg(container(rendered[stack])["command"], "--allowed-hosts").split(",")
    assert f"mlflow.mlops-{stack}.svc.cluster.local:5000" in hosts
    assert "*" not in hosts
    ingress_host = {"prod": "mlflow.example.com", "staging": "mlflow.staging.example.com"}.get(stack)
    if ingress_host:
        assert ingress_host in hosts


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_model_version_sources_restricted(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    regex = env_of(container(result))["MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"]
    bucket = result.outputs["artifact_bucket"]
    assert regex == source_regex(bucket)
    assert re.match(regex, f"s3://{bucket}/mlflow/1/abc/artifacts/model")
    assert re.match(regex, "models:/m-0123abcd")
    assert not re.match(regex, "s3://someone-elses-bucket/model")
    assert not re.match(regex, "file:///etc/passwd")
    assert not re.match(regex, f"s3://{bucket}/mlflow/../../secrets")


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_flask_secret_key_shared_by_replicas(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    env = env_of(container(result))
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == {"secretKeyRef": {"name": "mlflow-server", "key": "flask-secret-key"}}
    assert len(manifest(result, "Secret", "mlflow-server")["stringData"]["flask-secret-key"]) > 0
    assert result.one("random:index/randomPassword:RandomPassword", "tracking-flask-key").inputs["length"] >= 32


@pytest.mark.parametrize(("stack", "replicas", "workers"), [("dev", 1, 2), ("staging", 2, 2), ("prod", 3, 4)])
def test_workers_and_replicas_from_config(rendered: dict[str, RenderResult], stack: str, replicas: int,
                                          workers: int) -> None:
    result = rendered[stack]
    assert server(result)["spec"]["replicas"] == replicas
    assert arg(container(result)["command"], "--workers") == str(workers)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_probes_on_health(rendered: dict[str, RenderResult], stack: str) -> None:
    c = container(rendered[stack])
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_pdb_only_with_more_than_one_replica(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    pdbs = [m for m in manifests(result, "PodDisruptionBudget") if m["metadata"]["name"] == "mlflow"]
    if server(result)["spec"]["replicas"] > 1:
        assert len(pdbs) == 1
        assert pdbs[0]["spec"]["selector"]["matchLabels"] == server(result)["spec"]["selector"]["matchLabels"]
    else:
        assert pdbs == []


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_clusterip_service_and_tracking_uri(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert manifest(result, "Service", "mlflow")["spec"]["type"] == "ClusterIP"
    assert result.outputs["tracking_uri"] == f"http://mlflow.mlops-{stack}.svc.cluster.local:5000"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_ingress_with_tls_only_when_a_host_is_set(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    found = [m for m in manifests(result, "Ingress") if m["metadata"]["name"] == "mlflow"]
    if stack in ("prod", "staging"):
        assert found[0]["spec"]["tls"][0]["secretName"] == "mlflow-tls"
        assert result.outputs["tracking_url"].startswith("https://")
    else:
        assert found == [] and result.outputs["tracking_url"] is None


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_image_is_ours_pinned_by_tag(rendered: dict[str, RenderResult], stack: str) -> None:
    assert container(rendered[stack])["image"] == "ghcr.io/mlops-platform/workloads:0.1.0"


@pytest.mark.parametrize("stack", AWS_STACKS)
def test_tracking_irsa_role_scoped_to_artifact_bucket_and_key(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    policy = json.loads(result.one("aws:iam/rolePolicy:RolePolicy", "tracking-irsa").inputs["policy"])
    resources = {r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])}
    bucket_arn = f"arn:aws:s3:::{result.outputs['artifact_bucket']}"
    assert resources == {bucket_arn, f"{bucket_arn}/mlflow/*", result.outputs["kms_key_arn"]}
    account = manifest(result, "ServiceAccount", "mlflow")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("/tracking-irsa")
    assert pod_spec(server(result))["serviceAccountName"] == "mlflow"


# --- database ---------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_rds_encrypted_private_backed_up(rendered: dict[str, RenderResult], stack: str) -> None:
    db = rendered[stack].one(RDS).inputs
    assert db["storageEncrypted"] is True and db["kmsKeyId"].startswith("arn:aws:kms:")
    assert db["publiclyAccessible"] is False
    assert db["dbSubnetGroupName"] == "database-subnets"
    assert db["backupRetentionPeriod"] >= 1
    assert db["engine"] == "postgres"
    subnets = rendered[stack].one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"]
    assert subnets == rendered[stack].outputs["private_subnet_ids"]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_prod_shaped_rds_multi_az_with_final_snapshot(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    db = result.one(RDS)
    prod, shaped = stack == "prod", stack in ("prod", "staging")  # staging is prod-shaped, not protected
    assert db.inputs["multiAz"] is shaped
    assert db.inputs["deletionProtection"] is shaped
    assert db.inputs["skipFinalSnapshot"] is False  # every kind but ci (tests/infra/test_backup.py)
    assert db.inputs["finalSnapshotIdentifier"].startswith(f"mlops-{stack}-tracking-final-")
    assert db.inputs["backupRetentionPeriod"] == (14 if shaped else 1)
    assert db.protect is prod and db.retain_on_delete is prod


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_database_security_group_admits_only_the_cluster(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    group = result.one("aws:ec2/securityGroup:SecurityGroup", "database-sg")
    assert group.inputs["ingress"] == [{
        "protocol": "tcp", "fromPort": 5432, "toPort": 5432, "securityGroups": [result.outputs["cluster_security_group_id"]],
        "description": "EKS cluster security group"}]
    assert not any("cidrBlocks" in rule for rule in group.inputs["ingress"])
    assert result.one(RDS).inputs["vpcSecurityGroupIds"] == ["database-sg-id"]


@pytest.mark.parametrize("stack", ["ci", "local"])
def test_in_cluster_postgres_with_a_volume_for_ci_and_local(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    assert result.of_type(RDS) == []
    postgres = manifest(result, "StatefulSet", "postgres")
    assert postgres["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    env_from = pod_spec(postgres)["containers"][0]["envFrom"]
    assert env_from == [{"secretRef": {"name": "postgres-credentials"}}]
    assert result.outputs["database_endpoint"] == f"postgres.mlops-{stack}.svc.cluster.local:5432"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_database_password_never_in_plain_outputs(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    plain = json.dumps({k: v for k, v in result.outputs.items() if k not in result.secret_outputs})
    assert "render-database-password" not in plain and "a-very-secret-admin-password" not in plain


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_users_are_provisioned_before_the_server_serves(rendered: dict[str, RenderResult], stack: str) -> None:
    """After the migration, under its lock, with the server's auth config; only this init container sees
    every user's password (tests/contract/test_mlflow_permissions.py runs it)."""
    spec = pod_spec(server(rendered[stack]))
    assert [c["name"] for c in spec["initContainers"]] == [MIGRATE, PROVISION]
    provision = spec["initContainers"][1]
    assert f"pg_advisory_lock({LOCK_KEY})" in provision["command"][-1]
    env = env_of(provision)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == env_of(container(rendered[stack]))["MLFLOW_AUTH_CONFIG_PATH"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"secretKeyRef": {"name": "mlflow-server", "key": "admin-password"}}
    users = next(v for v in spec["volumes"] if v["name"] == "users")
    assert users["secret"]["secretName"] == "mlflow-users"
    readers = [c["name"] for c in spec["initContainers"] + spec["containers"]
               if any(m["name"] == "users" for m in c.get("volumeMounts", []))]
    assert readers == [PROVISION]
    annotations = server(rendered[stack])["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations[CHECKSUM_ANNOTATION])
