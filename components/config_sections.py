"""The sections of a stack file's `mlops-platform:*` config: one pydantic model each.

components/config.py composes them into `EnvironmentConfig` and reads the stack; the base
section (`_Section`: camelCase keys, unknown keys rejected) and the error type live here too.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.functional_validators import PlainValidator

from components import config_values as cv
from components import eks_versions
from components.backup_config import (
    PASSPHRASE_KEY,
    SNAPSHOT_ID,
    BackupConfig,
)
from workloads.settings import (
    SNS_TOPIC_ARN,
    MonitorSettings,
    RolloutMode,
    ServeSettings,
    TrainSettings,
    contract_field,
)

PROJECT = "mlops-platform"

# Names, quantities, schedules and images are checked types (`cv.*`, components/config_values.py).
IMAGE_TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
IAM_ROLE_NAME = r"^[A-Za-z0-9+=,.@_-]{1,64}$"
SNS_ARN = SNS_TOPIC_ARN  # the settings contract's pattern (workloads/settings.py)
# serving.endpoints[].monitorLabels: an s3:// prefix or file a labeling process writes ground truth to.
LABELS_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$"


def _labels_source(value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and re.match(LABELS_URI, value)):
        return value
    raise ValueError("is not true (the capture bucket's labels/<endpoint>/), false (no labels) or an s3:// URI "
                     "such as s3://my-labels/labels/churn/")


def labels_outside_prefix(source: bool | str, endpoint: str) -> str | None:
    """Why an explicit labels source is refused: the monitor trusts only `labels/<endpoint>/`, the prefix no
    workload role may write and only the labeler may (components/workload_iam.py); elsewhere, e.g. under
    `captures/`, a client or another workload could write the ground truth. None when it is fine."""
    if not isinstance(source, str):
        return None
    prefix = f"labels/{endpoint}/"
    key = source.split("/", 3)[3] if source.count("/") >= 3 else ""  # s3://bucket/<key>
    if not key.startswith(prefix):
        return (f"monitorLabels: {json.dumps(source)} is outside {prefix}; allowed: true (s3://<capture bucket>/{prefix}), "
                f"false, or s3://<bucket>/{prefix}[...] (no workload role may write there; the labeler may)")
    return None

# Secrets are separate top-level keys so that `pulumi config set --secret KEY` works.
SECRET_KEYS = ("trackingAdminPassword", "databasePassword", "kubeconfig", PASSPHRASE_KEY)


# Kinds with prod's shape: AZs, NAT per AZ, flow logs, multi-AZ RDS, backups, access logs, deletion protection.
PROD_SHAPED = ("prod", "staging")

# budget.monthlyUsd defaults: each kind's estimated maximum (`mlops plan STACK --cost`) plus room for
# usage the estimate cannot price; local (cloud: none) gets no budget.
BUDGET_USD_BY_KIND = {"dev": 2500.0, "staging": 4000.0, "prod": 11000.0, "ci": 25.0, "local": 25.0}


class ConfigError(ValueError):
    """A stack file that cannot describe a valid environment."""


class Kind(StrEnum):
    dev = "dev"
    staging = "staging"
    prod = "prod"
    ci = "ci"
    local = "local"


class Cloud(StrEnum):
    aws = "aws"
    none = "none"


class _Section(BaseModel):
    """Config sections use camelCase keys in YAML, like every Pulumi provider."""

    # allow_inf_nan=False: `.inf` and `nan` are never a setting (one finite-number rule for every float).
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, allow_inf_nan=False
    )


class Tags(_Section):
    owner: cv.TagValue = Field(min_length=1)
    cost_center: cv.TagValue = Field(min_length=1)
    extra: cv.AwsTags = {}


class NetworkConfig(_Section):
    mode: Literal["create", "existing"] = "create"
    cidr: str = "10.0.0.0/16"
    az_count: Annotated[int, Field(ge=2, le=6)] | None = None
    vpc_id: cv.VpcId | None = None
    private_subnet_ids: list[cv.SubnetId] = []
    public_subnet_ids: list[cv.SubnetId] = []
    flow_logs: bool | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError("is not an IPv4 CIDR block such as 10.0.0.0/16") from None
        if not 16 <= net.prefixlen <= 20:
            raise ValueError("must have a prefix between /16 and /20 to hold the subnets")
        return value

    @model_validator(mode="after")
    def _existing_needs_ids(self) -> NetworkConfig:
        if self.mode == "existing" and (not self.vpc_id or not self.private_subnet_ids):
            raise ValueError("mode 'existing' needs vpcId and privateSubnetIds")
        cv.only_in_mode(self, "existing", ("vpc_id", "private_subnet_ids", "public_subnet_ids"))
        return self


class _Pool(_Section):
    """What every node pool shares: instance types that fit its AMI, and min <= max."""

    instance_types: list[cv.InstanceType] = Field(min_length=1)
    min_size: int = Field(default=0, ge=0, le=200)
    max_size: int = Field(default=4, ge=1, le=200)

    @model_validator(mode="after")
    def _sizes_and_types(self) -> _Pool:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize: {self.min_size} is above maxSize {self.max_size}; minSize <= maxSize")
        gpu = getattr(self, "gpu", False)  # the system pool is CPU only
        wrong = [t for t in self.instance_types if cv.is_nvidia_gpu(t) != gpu]
        if wrong and gpu:
            raise ValueError(f"instanceTypes: {wrong} have no NVIDIA GPU but gpu is true; "
                             "use GPU types such as g5.xlarge or g6.xlarge, or set gpu: false")
        if wrong:
            raise ValueError(f"instanceTypes: {wrong} are GPU types on a CPU pool; use CPU types "
                             "such as m6i.large (training pools: or set gpu: true)")
        return self


class NodePool(_Pool):
    name: cv.PoolName
    spot: bool = False
    gpu: bool = False
    disk_size_gb: int = Field(default=100, ge=20, le=16384)
    labels: cv.NodeLabels = {}

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in cv.RESERVED_POOL_NAMES:
            raise ValueError(f"is the built-in pool's name; choose another (reserved: {sorted(cv.RESERVED_POOL_NAMES)})")
        return value


class SystemPool(_Pool):
    """On-demand CPU nodes for the tracking server and the endpoints."""

    instance_types: list[cv.InstanceType] = Field(default=["m6i.large"], min_length=1)
    min_size: int = Field(default=2, ge=1, le=200)
    max_size: int = Field(default=4, ge=1, le=200)


class ClusterConfig(_Section):
    """`create` an EKS cluster, attach to an `existing` one, or use a `kubeconfig` context."""

    mode: Literal["create", "existing", "kubeconfig"] = "create"
    version: cv.KubernetesVersion = eks_versions.DEFAULT_VERSION
    public_access_cidrs: list[str] = []
    system_pool: SystemPool = SystemPool()
    training_pools: list[NodePool] = []
    # existing: the stack that created the cluster (`org/mlops-platform/dev`).
    stack_reference: str | None = Field(default=None, pattern=r"^([A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.-]+$")
    # kubeconfig: the context to use from the `kubeconfig` secret (or ~/.kube/config).
    context: str | None = Field(default=None, min_length=1)
    autoscaler_version: str | None = Field(default=None, pattern=r"^v1\.[0-9]+\.[0-9]+$")  # None: from the EKS table

    @field_validator("version")
    @classmethod
    def _supported(cls, value: str) -> str:
        """A version past its end of EKS standard support is refused (dates: components/eks_versions.py)."""
        problem = eks_versions.support_problem(value, date.today())
        if problem:
            raise ValueError(problem)
        return value

    @property
    def autoscaler_tag(self) -> str:
        return self.autoscaler_version or eks_versions.autoscaler_release(self.version)[0]

    @field_validator("public_access_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.IPv4Network(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 CIDR block") from None
            if value.endswith("/0"):
                raise ValueError(f"{value!r} opens the API server to the internet; list your own CIDRs")
        return values

    @model_validator(mode="after")
    def _mode_needs(self) -> ClusterConfig:
        if self.mode == "existing" and not self.stack_reference:
            raise ValueError("mode 'existing' needs stackReference (the stack that owns the cluster)")
        cv.unique_names("trainingPools", [p.name for p in self.training_pools])
        cv.only_in_mode(self, "create", ("public_access_cidrs", "system_pool", "training_pools", "autoscaler_version"))
        cv.only_in_mode(self, "existing", ("stack_reference",))
        cv.only_in_mode(self, "kubeconfig", ("context",))
        if self.autoscaler_version and self.autoscaler_version.split(".")[1] != self.version.split(".")[1]:
            raise ValueError(f"autoscalerVersion: {self.autoscaler_version!r} must have the cluster's minor "
                             f"({self.version}): the cluster-autoscaler supports only its own Kubernetes minor")
        return self


class StorageConfig(_Section):
    noncurrent_version_days: int = Field(default=30, ge=1, le=3650)
    abort_multipart_days: int = Field(default=7, ge=1, le=365)
    capture_retention_days: int = Field(default=90, ge=1, le=3650)  # inference capture expires after N days
    access_logs: bool | None = None  # S3 server access logs to a log bucket; None: prod and staging
    access_log_days: int = Field(default=365, ge=1, le=3650)
    # cloud: none -> in-cluster MinIO
    minio_volume_size: cv.VolumeSize = "20Gi"
    minio_image: cv.ImageReference = "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z"
    minio_client_image: cv.ImageReference = "quay.io/minio/mc:RELEASE.2025-04-16T18-13-26Z"


class DatabaseConfig(_Section):
    instance_class: cv.DbInstanceClass = "db.t4g.medium"
    allocated_storage_gb: int = Field(default=20, ge=20, le=65536)
    engine_version: cv.PostgresVersion = "16"
    backup_retention_days: int | None = Field(default=None, ge=0, le=35)
    multi_az: bool | None = None
    # RDS enhanced monitoring (OS metrics every N seconds); None: 60 in prod and staging, 0 (off) otherwise.
    monitoring_interval_seconds: Literal[0, 1, 5, 10, 15, 30, 60] | None = None
    # in-cluster Postgres (ci, local, cloud: none)
    volume_size: cv.VolumeSize = "10Gi"
    image: cv.ImageReference = "postgres:16.4-alpine"
    # Recreate RDS from this snapshot (keep it set for the instance's life: changing it replaces the instance).
    restore_from_snapshot: str | None = Field(default=None, pattern=SNAPSHOT_ID)
    backup: BackupConfig = BackupConfig()  # cloud: none (components/backup_config.py)


class TrackingConfig(_Section):
    replicas: int = Field(default=1, ge=1, le=20)
    workers: int = Field(default=2, ge=1, le=32)
    admin_username: str = Field(default="admin", pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    host: cv.HostName | None = None  # external host name; an Ingress with TLS when set
    tls_secret_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    cpu: cv.Cpu = "500m"
    memory: cv.Memory = "1Gi"
    database: DatabaseConfig = DatabaseConfig()


class Replicas(_Section):
    min: int = Field(default=1, ge=0, le=100)
    max: int = Field(default=3, ge=1, le=100)

    @model_validator(mode="after")
    def _order(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min: {self.min} is above max {self.max}; min <= max")
        return self


class Rollout(_Section):
    """A `challenger` beside the champion (workloads/serving/rollout.py); the monitor promotes or rolls it back."""

    mode: RolloutMode = contract_field(ServeSettings, "rollout")
    weight: float = contract_field(ServeSettings, "canary_weight")  # canary only: the challenger's share

    @model_validator(mode="after")
    def _weight_for_canary(self) -> Rollout:
        if "weight" in self.model_fields_set and self.mode != "canary":
            raise ValueError(f"weight: {self.weight} applies to mode canary only (mode is {self.mode!r})")
        return self


class ServingEndpoint(_Section):
    name: cv.EndpointName
    # Keys that become `mlops serve` settings take their default and bounds from the contract.
    model: str = contract_field(ServeSettings, "model")
    alias: str = contract_field(ServeSettings, "alias")
    replicas: Replicas = Replicas()
    cpu: cv.Cpu = "500m"
    memory: cv.Memory = "1Gi"
    workers: int = contract_field(ServeSettings, "workers")
    max_batch_rows: int = contract_field(ServeSettings, "max_batch_rows")
    max_wait_ms: float = contract_field(ServeSettings, "max_wait_ms")
    capture: bool = contract_field(ServeSettings, "capture")
    # Hostile-input bounds a stack may tune (workloads/serving/limits.py, admission.py).
    max_request_rows: int = contract_field(ServeSettings, "max_request_rows")
    max_body_bytes: int = contract_field(ServeSettings, "max_body_bytes")
    max_decoded_bytes: int = contract_field(ServeSettings, "max_decoded_bytes")
    max_concurrent_requests: int = contract_field(ServeSettings, "max_concurrent_requests")
    # Loading a pickle-based model runs code from the registry: only if every registry writer is trusted.
    pickle_allowed: bool = contract_field(ServeSettings, "pickle_allowed")
    # The Ingress's rate limit per client address (ingress-nginx limit-rps; bursts up to 5x that).
    rate_limit_rps: int = Field(default=20, ge=1, le=10_000)
    host: cv.HostName | None = None
    # The monitor's ground truth: true = s3://<capture bucket>/labels/<name>/, false = none (drift only).
    monitor_labels: Annotated[bool | str, PlainValidator(_labels_source)] = True

    @model_validator(mode="after")
    def _labels_under_their_prefix(self) -> ServingEndpoint:
        problem = labels_outside_prefix(self.monitor_labels, self.name)
        if problem:
            raise ValueError(problem)
        return self

    # Bumping this rolls the Deployment (the alias is resolved at start-up).
    model_version: cv.VersionText | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,63}$")
    rollout: Rollout = Rollout()


class ServingConfig(_Section):
    endpoints: list[ServingEndpoint] = []

    @model_validator(mode="after")
    def _unique(self) -> ServingConfig:
        cv.unique_names("endpoints", [e.name for e in self.endpoints])
        return self


class TrainingJob(_Section):
    name: cv.TrainingName
    spec: str = contract_field(TrainSettings, "spec")  # path of the training spec inside the image
    pool: str | None = None  # training pool name; None -> any training pool
    gpus: int = Field(default=0, ge=0, le=8)
    cpu: cv.Cpu = "2"
    memory: cv.Memory = "4Gi"
    search_shards: int = contract_field(TrainSettings, "shards")
    backoff_limit: int = Field(default=1, ge=0, le=10)
    active_deadline_seconds: int = Field(default=3 * 3600, ge=60, le=30 * 24 * 3600)
    ttl_seconds_after_finished: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)


class MonitoringConfig(_Section):
    schedule: cv.CronSchedule = "0 * * * *"
    # `mlops monitor` settings: default and bounds from the contract (workloads/settings.py).
    window_hours: float = contract_field(MonitorSettings, "window_hours")
    min_rows: int = contract_field(MonitorSettings, "min_rows")
    drift_share: float = contract_field(MonitorSettings, "drift_share")
    psi_threshold: float = contract_field(MonitorSettings, "psi_threshold")
    metric_drop: float = contract_field(MonitorSettings, "metric_drop")
    cooldown_hours: float = contract_field(MonitorSettings, "cooldown_hours")
    alert_webhook: cv.WebhookUrl | None = contract_field(MonitorSettings, "alert_webhook")  # + no clear text
    alert_sns_topic_arn: str | None = contract_field(MonitorSettings, "alert_sns_topic_arn")
    retrain_job: str | None = None  # the training job to re-run when drift is found


class WorkloadsConfig(_Section):
    image: cv.ImageRepository = "ghcr.io/mlops-platform/workloads"
    image_tag: cv.VersionText = Field(default="0.1.0", pattern=IMAGE_TAG)
    # The deploy workflow pins the image it built by digest; it wins over imageTag when set.
    image_digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    training: list[TrainingJob] = []
    monitoring: MonitoringConfig = MonitoringConfig()

    @field_validator("image_tag")
    @classmethod
    def _no_latest(cls, value: str) -> str:
        if value == "latest":
            raise ValueError("'latest' is not allowed: pin a version so rollouts are reproducible")
        return value

    @model_validator(mode="after")
    def _jobs(self) -> WorkloadsConfig:
        names = [job.name for job in self.training]
        cv.unique_names("training", names)
        retrain = self.monitoring.retrain_job
        if retrain is not None and retrain not in names:
            raise ValueError(f"monitoring.retrainJob: {retrain!r} is not a training job; known: {names}")
        return self


class DeployConfig(_Section):
    """How the environment is deployed with a private API endpoint (README "Deploy"; components/access.py)."""

    bootstrap: bool = False  # first pass on a new account: only the AWS layer (nothing reaches the API yet)
    role_name: str = Field(default="mlops-deploy", pattern=IAM_ROLE_NAME)  # the deploy workflow's role
    ci_role_name: str | None = Field(default=None, pattern=IAM_ROLE_NAME)  # may create mlops-ci-* namespaces
    admin_role_names: list[Annotated[str, Field(pattern=IAM_ROLE_NAME)]] = []  # break-glass cluster admins
    runner_instance_type: cv.InstanceType = "m6i.large"  # the in-VPC runner that applies the Kubernetes layer


class RegistryConfig(_Section):
    """The account's ECR repository for the workload image (components/registry.py)."""

    create: bool | None = None  # None: the stack that owns the account's registry (dev, prod)
    repository: str = Field(default="mlops/workloads", pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
    untagged_days: int = Field(default=14, ge=1, le=365)


class ProtectionConfig(_Section):
    """Left unset, these follow the kind: prod protects, ci force-destroys."""

    protect: bool | None = None
    retain_on_delete: bool | None = None
    force_destroy: bool | None = None
    deletion_protection: bool | None = None


class BudgetConfig(_Section):
    """The environment's AWS Budgets budget (components/budget.py) and what the cost estimate assumes."""

    monthly_usd: float | None = Field(default=None, gt=0, le=10_000_000)  # None -> by kind
    alert_emails: list[Annotated[str, Field(pattern=EMAIL)]] = []
    # None -> workloads.monitoring.alertSnsTopicArn; with neither and no emails, a topic is created.
    alert_sns_topic_arn: str | None = Field(default=None, pattern=SNS_ARN)
    assumed_s3_gb: int = Field(default=100, ge=0, le=10_000_000)  # S3 is priced at this size: it holds data, not config
