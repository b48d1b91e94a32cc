"""The MLflow tracking server: authenticated, artifacts proxied to our bucket, on Postgres.

`mlflow server` (>= 3.17) with `--app-name basic-auth` (admin user and password from Pulumi
secrets, the auth tables in the same Postgres), `--serve-artifacts` to
`s3://<artifact bucket>/mlflow`, `--allowed-hosts` limited to the Service's and Ingress's
names, and model-version sources restricted to our own locations. The Flask secret key is
generated once and shared by all replicas through a Secret. On AWS the pod reaches S3
through an IRSA role scoped to the artifact bucket and its KMS key.

Before the server starts, an init container migrates the schema under a Postgres advisory lock
(components/migrations.py), so a new MLflow image never meets an out-of-date database; a second one
applies the user plan (components/mlflow_users.py): the admin password from config, one user per
workload with its grants, each user's password in its own Secret. `default_permission` is
NO_PERMISSIONS: users see only what they are granted. A checksum of those credentials (and of the
DSN) on the pod template rolls the Deployment when one changes, which is how a rotation takes
effect (README "Credentials and who can reach what"). The server
runs with MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: MLflow 3.17 otherwise starts a job runner and
seven consumer processes (~2 GB) that this platform does not use, against a 1Gi limit. Its request
metrics (`--expose-prometheus`) are served to the scraper by a sidecar on their own port
(workloads/tracking_metrics.py says why not MLflow's own /metrics).

Config keys: tracking.replicas, workers, adminUsername, host, tlsSecretName, cpu, memory;
workloads.image and workloads.imageTag (the image, never `latest`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config import EnvironmentConfig, Secrets
from components.credentials import minio_secret
from components.irsa import OidcProvider, irsa_role, service_account_annotations
from components.migrations import LOCK_KEY, migration_container
from components.mlflow_users import (
    METRICS_SECRET,
    USERS_FILE,
    credentials_checksum,
    plan,
    provision_container,
    user_secrets,
)
from components.security import (
    TELEMETRY_OFF,
    container_security_context,
    pod_security_context,
    resources,
    scratch_volume,
)
from components.workload_iam import tracking_policy
from workloads import layout

NAME = "mlflow"
PORT = 5000
ARTIFACT_PREFIX = layout.MLFLOW_ARTIFACTS.rstrip("/")
AUTH_CONFIG_PATH = "/etc/mlflow/basic_auth.ini"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "tracking",
          "app.kubernetes.io/part-of": "mlops-platform"}
# Workload pods that may talk to the tracking server carry this label (NetworkPolicy).
CLIENT_LABEL = {"mlops-platform/tracking-client": "true"}
CREDENTIALS_SECRET = METRICS_SECRET  # the metrics scraper's user: authenticated, no grants
CHECKSUM_ANNOTATION = "mlops-platform/credentials-checksum"
USERS_SECRET = "mlflow-users"
# `--expose-prometheus`: prometheus_client's multiprocess files, one set per uvicorn worker. The root
# filesystem is read-only: they go on the pod's /tmp emptyDir, which the metrics sidecar mounts too.
PROMETHEUS_DIR = "/tmp/mlflow-prometheus"
METRICS_CONTAINER = "metrics"
METRICS_PORT = 9464  # the sidecar's /metrics, for the scraper only (components/netpol.py)
METRICS_SCRIPT = "from workloads.tracking_metrics import main; main()"


@dataclass(frozen=True)
class TrackingArgs:
    env: EnvironmentConfig
    secrets: Secrets
    namespace: pulumi.Input[str]
    artifact_bucket: pulumi.Input[str]
    artifact_bucket_arn: pulumi.Input[str]
    database_uri: pulumi.Input[str]  # a Pulumi secret
    kms_key_arn: pulumi.Input[str] | None = None
    oidc: OidcProvider | None = None
    s3_endpoint: pulumi.Input[str] | None = None  # cloud: none
    s3_credentials_secret: pulumi.Input[str] | None = None  # cloud: none; the pod uses its own MinIO user


def allowed_hosts(namespace: str, host: str | None) -> list[str]:
    """Every name the server is reached by: the Service's DNS names (with and without port), the Ingress host."""
    names = [NAME, f"{NAME}.{namespace}", f"{NAME}.{namespace}.svc", f"{NAME}.{namespace}.svc.cluster.local"]
    hosts = [h for n in names for h in (n, f"{n}:{PORT}")]
    # `kubectl port-forward` arrives as localhost.
    hosts += ["localhost:*", "127.0.0.1:*"]
    if host:
        hosts.append(host)
    return hosts


def source_regex(artifact_bucket: str) -> str:
    """Model versions may only point at our registry, our runs, or our artifact location."""
    return (r"^(models:/[A-Za-z0-9_-]|runs:/[0-9a-f]|mlflow-artifacts:/"
            rf"|s3://{re.escape(artifact_bucket)}/{ARTIFACT_PREFIX}/)(?!.*\.\./).*$")


def auth_config(admin_username: str, database_uri: str) -> str:
    # The admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD (a Secret), never from this file.
    # MLflow reads this file with configparser, whose interpolation takes `%` as a reference: the DSN's
    # percent-encoded password (`%40` for `@`) must be written `%%40`.
    return "\n".join([
        "[mlflow]",
        "default_permission = NO_PERMISSIONS",
        f"database_uri = {database_uri.replace('%', '%%')}",
        f"admin_username = {admin_username}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false",
        "",
    ])


class TrackingServer(pulumi.ComponentResource):
    tracking_uri: pulumi.Output[str]  # in-cluster
    tracking_url: pulumi.Output[str] | None  # external, with an Ingress
    credentials_secret: pulumi.Output[str]  # the scraper's Secret, resolving once every user's Secret exists

    def __init__(self, name: str, args: TrackingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:tracking:TrackingServer", name, None, opts)
        cfg = args.env.tracking
        child = pulumi.ResourceOptions(parent=self)
        secret_name, checksum = self._secrets(name, args)
        account = self._service_account(name, args)
        deployment = self._deployment(name, args, account, secret_name, checksum)
        if cfg.replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb",
                metadata={"name": NAME, "namespace": args.namespace, "labels": LABELS},
                spec={"minAvailable": cfg.replicas - 1 if cfg.replicas > 2 else 1,
                      "selector": {"matchLabels": LABELS}},
                opts=child,
            )
        service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata={"name": NAME, "namespace": args.namespace, "labels": LABELS},
            spec={"type": "ClusterIP", "selector": LABELS,
                  "ports": [{"name": "http", "port": PORT, "targetPort": "http"},
                            {"name": METRICS_CONTAINER, "port": METRICS_PORT, "targetPort": METRICS_CONTAINER}]},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[deployment]),
        )
        self.tracking_uri = pulumi.Output.concat(
            "http://", service.metadata["name"], ".", args.namespace, ".svc.cluster.local:", str(PORT))
        self.tracking_url = None
        if cfg.host:
            ingress(self, f"{name}-ingress", NAME, args.namespace, cfg.host, cfg.tls_secret_name, NAME, PORT, LABELS)
            self.tracking_url = pulumi.Output.from_input(f"https://{cfg.host}")
        self.register_outputs({"tracking_uri": self.tracking_uri, "tracking_url": self.tracking_url})

    def _secrets(self, name: str, args: TrackingArgs) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """The server's Secret (Flask key, admin password, DSN, auth config), the users' Secrets and the plan
        the init container applies; returns the server Secret's name and the credentials checksum."""
        cfg = args.env.tracking
        child = pulumi.ResourceOptions(parent=self)
        users = user_secrets(self, f"{name}-user", args.namespace, plan(args.env), LABELS)
        k8s.core.v1.Secret(f"{name}-users", metadata={"name": USERS_SECRET, "namespace": args.namespace,
                                                     "labels": LABELS},
                           string_data={USERS_FILE: users.document}, opts=child)
        flask_key = random.RandomPassword(f"{name}-flask-key", length=64, special=False, opts=child)
        server_secret = k8s.core.v1.Secret(
            f"{name}-server",
            metadata={"name": "mlflow-server", "namespace": args.namespace, "labels": LABELS},
            string_data={
                # One key for every replica: sessions and CSRF tokens survive load balancing.
                "flask-secret-key": flask_key.result,
                "admin-password": args.secrets.tracking_admin_password,
                "backend-store-uri": args.database_uri,
                "basic_auth.ini": pulumi.Output.from_input(args.database_uri).apply(
                    lambda uri: auth_config(cfg.admin_username, uri)),
            },
            opts=child,
        )
        self.credentials_secret = users.ready
        # Salted with the Flask key, the digest reveals nothing: unsecret, so `pulumi preview` still shows the spec.
        checksum = pulumi.Output.unsecret(pulumi.Output.all(
            flask_key.result, args.secrets.tracking_admin_password, users.document, args.database_uri).apply(
            lambda v: credentials_checksum(*v)))
        return server_secret.metadata["name"], checksum

    def _service_account(self, name: str, args: TrackingArgs) -> k8s.core.v1.ServiceAccount:
        """On AWS, IRSA limited to the artifact prefix of the artifact bucket and its key."""
        env, ns = args.env, args.env.namespace
        child = pulumi.ResourceOptions(parent=self)
        role = None
        if args.oidc is not None:
            policy = pulumi.Output.all(args.artifact_bucket_arn, args.kms_key_arn).apply(
                lambda v: tracking_policy(v[0], v[1]))
            role = irsa_role(f"{name}-irsa", env, args.oidc, ns, NAME, policy, parent=self)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={"name": NAME, "namespace": args.namespace, "labels": LABELS,
                      "annotations": service_account_annotations(role)},
            automount_service_account_token=False,
            opts=child,
        )

        return account

    def _server_env(self, args: TrackingArgs,
                    secret_name: pulumi.Output[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The server container's env and envFrom."""
        env, cfg = args.env, args.env.tracking
        env_vars: list[dict[str, Any]] = [
            *TELEMETRY_OFF,
            {"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "backend-store-uri"}}},
            {"name": "MLFLOW_FLASK_SERVER_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "flask-secret-key"}}},
            {"name": "MLFLOW_AUTH_ADMIN_USERNAME", "value": cfg.admin_username},
            {"name": "MLFLOW_AUTH_ADMIN_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "admin-password"}}},
            {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": AUTH_CONFIG_PATH},
            # No job runner and its seven consumers (~2 GB): nothing here submits MLflow jobs.
            {"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "false"},
            {"name": "MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX",
             "value": pulumi.Output.from_input(args.artifact_bucket).apply(source_regex)},
            {"name": "HOME", "value": "/tmp"},
        ]
        env_from: list[dict[str, Any]] = []
        if args.s3_endpoint is not None:
            # Its own MinIO user (the artifact prefix only), once the setup Job created it; never MinIO's root.
            own = pulumi.Output.from_input(args.s3_credentials_secret).apply(lambda _: minio_secret("tracking"))
            env_vars.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": args.s3_endpoint})
            env_from.append({"secretRef": {"name": own}})
        else:
            env_vars.append({"name": "AWS_REGION", "value": env.region})

        return env_vars, env_from

    def _deployment(self, name: str, args: TrackingArgs, account: k8s.core.v1.ServiceAccount,
                    secret_name: pulumi.Output[str], checksum: pulumi.Output[str]) -> k8s.apps.v1.Deployment:
        env, cfg = args.env, args.env.tracking
        child = pulumi.ResourceOptions(parent=self)
        image = env.workload_image
        return k8s.apps.v1.Deployment(
            f"{name}",
            metadata={"name": NAME, "namespace": args.namespace, "labels": LABELS},
            spec={
                "replicas": cfg.replicas,
                "selector": {"matchLabels": LABELS},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    # A rotated credential changes the checksum: the pods roll and the init container applies it.
                    "metadata": {"labels": LABELS, "annotations": {CHECKSUM_ANNOTATION: checksum}},
                    "spec": {
                        "serviceAccountName": account.metadata["name"],
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security_context(),
                        "nodeSelector": _system_nodes(env),
                        "topologySpreadConstraints": [{
                            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": LABELS}}],
                        # The schema is current (or created) before any replica's server verifies it; then
                        # the users, their passwords and grants, and the admin password are as planned.
                        "initContainers": [
                            migration_container(image, secret_name, TELEMETRY_OFF),
                            provision_container(image, secret_name, cfg.admin_username, "users", AUTH_CONFIG_PATH,
                                                LOCK_KEY, TELEMETRY_OFF)],
                        "containers": [self._server_container(args, image, secret_name), metrics_container(image, self.credentials_secret)],
                        "volumes": [
                            scratch_volume("tmp", "1Gi"),
                            {"name": "auth-config", "secret": {
                                "secretName": secret_name, "defaultMode": 0o440,
                                "items": [{"key": "basic_auth.ini", "path": "basic_auth.ini"}]}},
                            # Every user's password: mounted by the init container only.
                            {"name": "users", "secret": {"secretName": USERS_SECRET, "defaultMode": 0o440}},
                        ],
                    },
                },
            },
            opts=child,
        )


    def _server_container(self, args: TrackingArgs, image: str, secret_name: pulumi.Output[str]) -> dict[str, Any]:
        """`mlflow server` on the uvicorn server (the security middleware needs it), probed on /health."""
        cfg, ns = args.env.tracking, args.env.namespace
        env_vars, env_from = self._server_env(args, secret_name)
        command = pulumi.Output.from_input(args.artifact_bucket).apply(lambda bucket: [
            "mlflow", "server",
            "--host", "0.0.0.0",
            "--port", str(PORT),
            "--workers", str(cfg.workers),
            "--app-name", "basic-auth",
            "--serve-artifacts",
            "--artifacts-destination", f"s3://{bucket}/{ARTIFACT_PREFIX}",
            "--allowed-hosts", ",".join(allowed_hosts(ns, cfg.host)),
            "--x-frame-options", "DENY",
            # Request metrics (prometheus-flask-exporter) as files the sidecar serves: MLflow's own /metrics
            # is admin-only under its fail-closed basic auth (workloads/tracking_metrics.py).
            "--expose-prometheus", PROMETHEUS_DIR,
        ])
        probe = {"httpGet": {"path": "/health", "port": "http"}}
        return {
            "name": NAME,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            "env": env_vars,
            "envFrom": env_from,
            "ports": [{"name": "http", "containerPort": PORT}],
            "readinessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 5},
            "livenessProbe": {**probe, "initialDelaySeconds": 60, "periodSeconds": 20,
                              "timeoutSeconds": 5, "failureThreshold": 5},
            "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
            "resources": resources(cfg.cpu, cfg.memory),
            "securityContext": container_security_context(),
            "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "auth-config", "mountPath": "/etc/mlflow", "readOnly": True},
            ],
        }


def metrics_container(image: str, credentials_secret: pulumi.Input[str]) -> dict[str, Any]:
    """The sidecar summing the server workers' metric files on METRICS_PORT, to the metrics user only
    (workloads/tracking_metrics.py)."""
    return {
        "name": METRICS_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", METRICS_SCRIPT, PROMETHEUS_DIR, str(METRICS_PORT)],
        # The metrics user's credentials: the ServiceMonitor sends them, the sidecar checks them (the name
        # resolves once the users' Secrets exist, so the pod never starts without it).
        "env": [*TELEMETRY_OFF, {"name": "HOME", "value": "/tmp"},
                *({"name": key, "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": key}}}
                  for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))],
        "ports": [{"name": METRICS_CONTAINER, "containerPort": METRICS_PORT}],
        # TCP: /metrics wants the credentials, which a kubelet probe does not send.
        "readinessProbe": {"tcpSocket": {"port": METRICS_CONTAINER}, "periodSeconds": 10},
        "livenessProbe": {"tcpSocket": {"port": METRICS_CONTAINER}, "initialDelaySeconds": 10,
                          "periodSeconds": 30, "failureThreshold": 3},
        "resources": resources("25m", "64Mi", cpu_limit="100m"),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _system_nodes(env: EnvironmentConfig) -> dict[str, str]:
    """On a cluster we create, services stay on the system pool (training pools are tainted anyway)."""
    return {"mlops-platform/pool": "system"} if env.cluster.mode in ("create", "existing") else {}


def ingress(parent: pulumi.Resource, resource_name: str, name: str, namespace: pulumi.Input[str], host: str,
            tls_secret_name: str | None, service: str, port: int, labels: dict[str, str]) -> k8s.networking.v1.Ingress:
    """An Ingress for one host, TLS always on (the secret defaults to `<name>-tls`)."""
    return k8s.networking.v1.Ingress(
        resource_name,
        metadata={"name": name, "namespace": namespace, "labels": labels,
                  "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "true"}},
        spec={
            "tls": [{"hosts": [host], "secretName": tls_secret_name or f"{name}-tls"}],
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": port}}}}]}}],
        },
        opts=pulumi.ResourceOptions(parent=parent),
    )
