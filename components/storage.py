"""Object storage: datasets, MLflow artifacts and models, inference capture.

On AWS: three S3 buckets sharing one customer-managed KMS key. Each bucket is
versioned, SSE-KMS encrypted, fully private (all four public-access blocks and
BucketOwnerEnforced), TLS-only by policy, and cleans up noncurrent versions and
abandoned multipart uploads; inference capture expires after `storage.captureRetentionDays`.
In prod every bucket setting is protected and retained with the bucket and its key (a removed
encryption or public-access block would silently weaken retained data). With
`storage.accessLogs` (prod and staging), S3 server access logs go to a log bucket (SSE-S3: S3's
log delivery cannot write with a KMS key), kept `storage.accessLogDays`.

With `cloud: none`: an in-cluster MinIO (persistent volume, generated root credential in a
Secret, a Job that creates the buckets with versioning) so workloads see the same S3 API. The
root credential stays with MinIO and that Job: every workload gets a MinIO user scoped like its
IRSA role (components/minio_users.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config import Cloud, EnvironmentConfig, ServingEndpoint, StorageConfig
from components.minio_users import MinioSetup, create_users
from components.security import (
    container_security_context,
    pod_security_context,
    resources,
    scratch_volume,
)

BUCKET_ROLES = ("data", "artifacts", "capture")
MINIO_PORT = 9000


@dataclass(frozen=True)
class StorageArgs:
    """Storage's own config section and the kind-derived switches it needs, not the whole environment."""

    storage: StorageConfig
    name: str  # the environment's name (bucket and key names)
    cloud: Cloud
    protect: bool
    retain_on_delete: bool
    force_destroy: bool
    access_logs: bool
    namespace: pulumi.Input[str] | None = None  # cloud: none only
    endpoints: tuple[ServingEndpoint, ...] = ()  # cloud: none: the monitoring user may read their labels

    @classmethod
    def of(cls, env: EnvironmentConfig, namespace: pulumi.Input[str] | None = None) -> StorageArgs:
        return cls(env.storage, env.name, env.cloud, env.protect, env.retain_on_delete, env.force_destroy,
                   env.access_logs, namespace, tuple(env.serving.endpoints))


class Storage(pulumi.ComponentResource):
    data_bucket: pulumi.Output[str]
    artifact_bucket: pulumi.Output[str]
    capture_bucket: pulumi.Output[str]
    bucket_arns: dict[str, pulumi.Output[str]]
    kms_key_arn: pulumi.Output[str] | None
    s3_endpoint: pulumi.Output[str] | None
    credentials_secret: pulumi.Output[str] | None  # cloud: none, name of the MinIO Secret

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:storage:Storage", name, None, opts)
        if args.cloud == Cloud.aws:
            self._aws(name, args)
        else:
            self._minio(name, args, args.namespace)
        self.register_outputs(
            {
                "data_bucket": self.data_bucket,
                "artifact_bucket": self.artifact_bucket,
                "capture_bucket": self.capture_bucket,
                "kms_key_arn": self.kms_key_arn,
                "s3_endpoint": self.s3_endpoint,
            }
        )

    # --- AWS ------------------------------------------------------------------------------

    def _aws(self, name: str, env: StorageArgs) -> None:
        stateful = pulumi.ResourceOptions(parent=self, protect=env.protect, retain_on_delete=env.retain_on_delete)

        key = aws.kms.Key(
            f"{name}-key",
            description=f"mlops-platform {env.name}: buckets for data, artifacts and inference capture",
            enable_key_rotation=True,
            deletion_window_in_days=30 if env.protect else 7,
            opts=stateful,
        )
        aws.kms.Alias(f"{name}-key-alias", name=f"alias/mlops-{env.name}-storage", target_key_id=key.key_id,
                      opts=pulumi.ResourceOptions(parent=self))

        buckets = {role: self._aws_bucket(f"{name}-{role}", env, key, stateful) for role in BUCKET_ROLES}
        self._capture_expiry(f"{name}-capture", env, buckets["capture"], stateful)
        if env.access_logs:
            self._access_logs(name, env, buckets, stateful)
        self.data_bucket = buckets["data"].bucket
        self.artifact_bucket = buckets["artifacts"].bucket
        self.capture_bucket = buckets["capture"].bucket
        self.bucket_arns = {role: bucket.arn for role, bucket in buckets.items()}
        self.kms_key_arn = key.arn
        self.s3_endpoint = None
        self.credentials_secret = None

    def _aws_bucket(self, name: str, env: StorageArgs, key: aws.kms.Key,
                    stateful: pulumi.ResourceOptions) -> aws.s3.Bucket:
        child = stateful  # a bucket's settings are kept exactly as long as the bucket
        bucket = aws.s3.Bucket(name, force_destroy=env.force_destroy, opts=stateful)

        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[{
                "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms", "kms_master_key_id": key.arn},
                # Bucket keys cut KMS request costs by orders of magnitude for many small objects.
                "bucket_key_enabled": True,
            }],
            opts=child,
        )
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-policy",
            bucket=bucket.id,
            policy=bucket.arn.apply(tls_only_policy),
            # S3 rejects a policy while the public-access block is being changed.
            opts=pulumi.ResourceOptions.merge(stateful, pulumi.ResourceOptions(depends_on=[public_access])),
        )
        if not name.endswith("-capture"):  # the capture bucket's lifecycle adds its expiry (_capture_expiry)
            aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=bucket.id, rules=lifecycle_rules(env),
                                                opts=child)
        return bucket

    def _capture_expiry(self, name: str, env: StorageArgs, bucket: aws.s3.Bucket,
                        stateful: pulumi.ResourceOptions) -> None:
        """Inference capture holds request payloads: kept `storage.captureRetentionDays`, then expired."""
        aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=bucket.id, rules=[
            *lifecycle_rules(env),
            {"id": "expire-captures", "status": "Enabled", "filter": {"prefix": "captures/"},
             "expiration": {"days": env.storage.capture_retention_days}},
        ], opts=stateful)

    def _access_logs(self, name: str, env: StorageArgs, buckets: dict[str, aws.s3.Bucket],
                     stateful: pulumi.ResourceOptions) -> None:
        """A log bucket for S3 server access logs of the three buckets (who read or wrote which object)."""
        logs = aws.s3.Bucket(f"{name}-access-logs", force_destroy=env.force_destroy, opts=stateful)
        aws.s3.BucketVersioning(f"{name}-access-logs-versioning", bucket=logs.id,
                                versioning_configuration={"status": "Enabled"}, opts=stateful)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-access-logs-encryption", bucket=logs.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=stateful)
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-access-logs-public-access", bucket=logs.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=stateful)
        aws.s3.BucketOwnershipControls(f"{name}-access-logs-ownership", bucket=logs.id,
                                       rule={"object_ownership": "BucketOwnerEnforced"}, opts=stateful)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        aws.s3.BucketPolicy(
            f"{name}-access-logs-policy", bucket=logs.id,
            policy=pulumi.Output.all(logs.arn, account).apply(lambda v: access_log_policy(v[0], v[1])),
            opts=pulumi.ResourceOptions.merge(stateful, pulumi.ResourceOptions(depends_on=[block])))
        aws.s3.BucketLifecycleConfiguration(f"{name}-access-logs-lifecycle", bucket=logs.id, rules=[
            {"id": "expire-access-logs", "status": "Enabled", "filter": {},
             "expiration": {"days": env.storage.access_log_days},
             "noncurrent_version_expiration": {"noncurrent_days": 1}},
        ], opts=stateful)
        for role, bucket in buckets.items():
            aws.s3.BucketLogging(f"{name}-{role}-logging", bucket=bucket.id, target_bucket=logs.id,
                                 target_prefix=f"{role}/", opts=stateful)

    # --- cloud: none ----------------------------------------------------------------------

    def _minio(self, name: str, env: StorageArgs, namespace: pulumi.Input[str] | None) -> None:
        if namespace is None:
            raise ValueError("Storage with cloud 'none' needs the environment's namespace")
        child = pulumi.ResourceOptions(parent=self)
        labels = {"app.kubernetes.io/name": "minio", "app.kubernetes.io/part-of": "mlops-platform"}
        bucket_names = {role: f"mlops-{env.name}-{role}" for role in BUCKET_ROLES}

        password = random.RandomPassword(f"{name}-minio-password", length=32, special=False, opts=child)
        credentials = k8s.core.v1.Secret(
            f"{name}-minio-credentials",
            metadata={"name": "minio-credentials", "namespace": namespace, "labels": labels},
            string_data={
                "MINIO_ROOT_USER": "mlops-admin",
                "MINIO_ROOT_PASSWORD": password.result,
            },
            opts=child,
        )
        service = k8s.core.v1.Service(
            f"{name}-minio",
            metadata={"name": "minio", "namespace": namespace, "labels": labels},
            spec={"selector": labels, "ports": [{"name": "s3", "port": MINIO_PORT, "targetPort": "s3"}]},
            opts=child,
        )
        self._minio_server(name, env, namespace, credentials.metadata["name"], labels)
        endpoint = pulumi.Output.concat("http://", service.metadata["name"], ".", namespace, ".svc:", str(MINIO_PORT))
        setup = create_users(self, name, MinioSetup(namespace, endpoint, credentials.metadata["name"], password.result,
                                                    bucket_names, env.endpoints, env.storage.minio_client_image,
                                                    labels), depends_on=[service])
        self.data_bucket = pulumi.Output.from_input(bucket_names["data"])
        self.artifact_bucket = pulumi.Output.from_input(bucket_names["artifacts"])
        self.capture_bucket = pulumi.Output.from_input(bucket_names["capture"])
        self.bucket_arns = {role: pulumi.Output.from_input(f"arn:aws:s3:::{b}") for role, b in bucket_names.items()}
        self.kms_key_arn = None
        self.s3_endpoint = endpoint
        # The root Secret's name, resolving once the setup Job created every account's user: a consumer
        # (components/credentials.py) then references its own user's Secret, after that user exists.
        self.credentials_secret = pulumi.Output.all(credentials.metadata["name"], setup.metadata["name"]).apply(
            lambda v: str(v[0]))

    def _minio_server(self, name: str, env: StorageArgs, namespace: pulumi.Input[str],
                      root_secret: pulumi.Input[str], labels: dict[str, str]) -> None:
        """One MinIO pod on a persistent volume, its root credential from the Secret."""
        k8s.apps.v1.StatefulSet(
            f"{name}-minio",
            metadata={"name": "minio", "namespace": namespace, "labels": labels},
            spec={
                "serviceName": "minio",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security_context(),
                        "containers": [{
                            "name": "minio",
                            "image": env.storage.minio_image,
                            "args": ["server", "/data", "--address", f":{MINIO_PORT}"],
                            "envFrom": [{"secretRef": {"name": root_secret}}],
                            "ports": [{"name": "s3", "containerPort": MINIO_PORT}],
                            "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": "s3"}},
                            "livenessProbe": {"httpGet": {"path": "/minio/health/live", "port": "s3"},
                                              "initialDelaySeconds": 10},
                            "resources": resources("250m", "512Mi"),
                            "securityContext": container_security_context(),
                            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                             {"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [scratch_volume()],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": env.storage.minio_volume_size}}},
                }],
            },
            opts=pulumi.ResourceOptions(parent=self, protect=env.protect, retain_on_delete=env.retain_on_delete),
        )


def lifecycle_rules(env: StorageArgs) -> list[dict[str, object]]:
    return [
        {"id": "expire-noncurrent-versions", "status": "Enabled", "filter": {},
         "noncurrent_version_expiration": {"noncurrent_days": env.storage.noncurrent_version_days}},
        {"id": "abort-incomplete-multipart-uploads", "status": "Enabled", "filter": {},
         "abort_incomplete_multipart_upload": {"days_after_initiation": env.storage.abort_multipart_days}},
    ]


def access_log_policy(bucket_arn: str, account: str) -> str:
    """TLS only, and S3's log delivery may write here only for buckets of our account (by source account,
    not source ARNs: those would make this policy depend on every bucket it logs)."""
    tls = json.loads(tls_only_policy(bucket_arn))["Statement"]
    return json.dumps({"Version": "2012-10-17", "Statement": [*tls, {
        "Sid": "S3ServerAccessLogs",
        "Effect": "Allow",
        "Principal": {"Service": "logging.s3.amazonaws.com"},
        "Action": "s3:PutObject",
        "Resource": f"{bucket_arn}/*",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    }]})


def tls_only_policy(bucket_arn: str) -> str:
    """Deny every request that does not arrive over TLS."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    })
