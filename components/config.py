"""The typed model of one environment, read from the stack's `mlops-platform:*` config.

Every key in `stacks/Pulumi.<stack>.yaml` under the `mlops-platform:` namespace is a
section of `EnvironmentConfig`. Unknown keys are rejected so a typo fails loudly, and
every error names the stack file key path, the bad value and what is allowed, before
a single resource is registered.

Defaults follow the environment kind: prod protects stateful resources and spreads
across three AZs; ci is cheap and force-destroyable; local runs on any cluster.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pulumi
from pydantic import Field, ValidationError, model_validator

from components import config_values as cv
from components.backup_config import (
    PASSPHRASE_KEY,
    PASSPHRASE_MIN_LENGTH,
    check_backups,
)
from components.config_errors import format_validation_error
from components.config_sections import (  # noqa: F401 - the sections, re-exported for `from components.config import X`
    BUDGET_USD_BY_KIND,
    EMAIL,
    IAM_ROLE_NAME,
    IMAGE_TAG,
    LABELS_URI,
    PROD_SHAPED,
    PROJECT,
    SECRET_KEYS,
    SNS_ARN,
    BudgetConfig,
    Cloud,
    ClusterConfig,
    ConfigError,
    DatabaseConfig,
    DeployConfig,
    Kind,
    MonitoringConfig,
    NetworkConfig,
    NodePool,
    ProtectionConfig,
    RegistryConfig,
    Replicas,
    ServingConfig,
    ServingEndpoint,
    StorageConfig,
    SystemPool,
    Tags,
    TrackingConfig,
    TrainingJob,
    WorkloadsConfig,
    _labels_source,
    _Pool,
    _Section,
)
from components.observability_config import ObservabilityConfig, check_cluster_mode


class EnvironmentConfig(_Section):
    name: cv.EnvName
    kind: Kind
    cloud: Cloud = Cloud.aws
    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
    tags: Tags
    network: NetworkConfig = NetworkConfig()
    cluster: ClusterConfig = ClusterConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    serving: ServingConfig = ServingConfig()
    workloads: WorkloadsConfig = WorkloadsConfig()
    protection: ProtectionConfig = ProtectionConfig()
    budget: BudgetConfig = BudgetConfig()
    deploy: DeployConfig = DeployConfig()
    registry: RegistryConfig = RegistryConfig()
    observability: ObservabilityConfig = ObservabilityConfig()

    @model_validator(mode="after")
    def _observability(self) -> EnvironmentConfig:
        check_cluster_mode(self.observability, self.cluster.mode)  # components/observability_config.py
        return self

    @model_validator(mode="after")
    def _backups(self) -> EnvironmentConfig:
        db = self.tracking.database  # components/backup_config.py
        check_backups(cloud_none=self.cloud == Cloud.none, in_cluster=self.in_cluster_database, backup=db.backup,
                      restore_from_snapshot=db.restore_from_snapshot)
        return self

    @model_validator(mode="after")
    def _kind_rules(self) -> EnvironmentConfig:
        if self.protection.force_destroy and self.kind != Kind.ci:
            raise ValueError(
                f"protection.forceDestroy: true is only allowed for kind ci, not {self.kind.value}"
            )
        if self.cloud == Cloud.none and self.cluster.mode != "kubeconfig":
            raise ValueError(f"cluster.mode: {self.cluster.mode!r} must be 'kubeconfig' when cloud is 'none'")
        if self.cloud == Cloud.aws and self.cluster.mode == "kubeconfig":
            raise ValueError("cluster.mode: 'kubeconfig' needs cloud 'none'")
        pools = {p.name: p for p in self.cluster.training_pools}
        for i, job in enumerate(self.workloads.training):
            if job.pool and self.cluster.mode == "create" and job.pool not in pools:
                raise ValueError(f"workloads.training[{i}].pool: {job.pool!r} names unknown pool; known: {list(pools)}")
            if job.gpus and job.pool in pools and not pools[job.pool].gpu:
                raise ValueError(f"workloads.training[{i}].gpus: {job.gpus} but pool {job.pool!r} has no GPUs; "
                                 "use a pool with gpu: true or gpus: 0")
        if self.deploy.bootstrap and (self.cloud != Cloud.aws or self.cluster.mode != "create"):
            raise ValueError("deploy.bootstrap: true applies only to a stack that creates its EKS cluster "
                             f"(cloud aws, cluster.mode create), not cluster.mode {self.cluster.mode!r}")
        return self

    @model_validator(mode="after")
    def _derived_names(self) -> EnvironmentConfig:
        """RDS takes `mlops-<name>-` as its identifier prefix; MinIO names buckets `mlops-<name>-<role>`."""
        if not self.in_cluster_database and self.cloud == Cloud.aws:
            if len(self.name) > cv.ENV_NAME_MAX_WITH_RDS or "--" in self.name:
                raise ValueError(f"name: {self.name!r} must be at most {cv.ENV_NAME_MAX_WITH_RDS} characters without "
                                 "'--' because RDS builds its identifier mlops-<name>-<26 characters> (<= 63)")
        if self.cloud == Cloud.none and len(self.name) > cv.ENV_NAME_MAX_WITH_MINIO:
            raise ValueError(f"name: {self.name!r} must be at most {cv.ENV_NAME_MAX_WITH_MINIO} characters because "
                             "MinIO's bucket mlops-<name>-artifacts must be at most 63")
        return self

    # Kind-derived defaults, in one place.
    @property
    def protect(self) -> bool:
        return _pick(self.protection.protect, self.kind == Kind.prod)

    @property
    def retain_on_delete(self) -> bool:
        return _pick(self.protection.retain_on_delete, self.kind == Kind.prod)

    @property
    def force_destroy(self) -> bool:
        return _pick(self.protection.force_destroy, self.kind == Kind.ci)

    # Staging is shaped like prod (README "Staging and prod": where they differ, and why).
    @property
    def prod_shaped(self) -> bool:
        return self.kind in PROD_SHAPED

    @property
    def deletion_protection(self) -> bool:
        return _pick(self.protection.deletion_protection, self.prod_shaped)

    @property
    def az_count(self) -> int:
        return _pick(self.network.az_count, 3 if self.prod_shaped else 2)

    @property
    def nat_per_az(self) -> bool:
        """One NAT gateway per AZ, so an AZ outage doesn't cut the others off; one in all otherwise."""
        return self.prod_shaped

    @property
    def flow_logs(self) -> bool:
        return _pick(self.network.flow_logs, self.prod_shaped)

    @property
    def multi_az_database(self) -> bool:
        return _pick(self.tracking.database.multi_az, self.prod_shaped)

    @property
    def backup_retention_days(self) -> int:
        return _pick(self.tracking.database.backup_retention_days, 14 if self.prod_shaped else 1)

    @property
    def database_monitoring_interval(self) -> int:
        return _pick(self.tracking.database.monitoring_interval_seconds, 60 if self.prod_shaped else 0)

    @property
    def access_logs(self) -> bool:
        return self.cloud == Cloud.aws and _pick(self.storage.access_logs, self.prod_shaped)

    @property
    def log_retention_days(self) -> int:
        """CloudWatch log groups (control plane, flow logs)."""
        return 365 if self.prod_shaped else 30

    @property
    def creates_registry(self) -> bool:
        """dev's stack owns the registry of the dev/staging account, prod's that of the prod account."""
        return self.cloud == Cloud.aws and _pick(self.registry.create, self.kind in (Kind.dev, Kind.prod))

    @property
    def workload_image(self) -> str:
        """The workload image, pinned by digest when the deploy workflow set one."""
        if self.workloads.image_digest:
            return f"{self.workloads.image}@{self.workloads.image_digest}"
        return f"{self.workloads.image}:{self.workloads.image_tag}"

    @property
    def budget_monthly_usd(self) -> float:
        return _pick(self.budget.monthly_usd, BUDGET_USD_BY_KIND[self.kind])

    @property
    def budget_alert_sns_topic_arn(self) -> str | None:
        return self.budget.alert_sns_topic_arn or self.workloads.monitoring.alert_sns_topic_arn

    @property
    def in_cluster_database(self) -> bool:
        """ci and local environments keep Postgres in the cluster: fast to create and destroy."""
        return self.cloud == Cloud.none or self.kind in (Kind.ci, Kind.local)

    @property
    def rds_final_snapshot(self) -> bool:
        """RDS keeps a final snapshot at teardown everywhere but ci (the recreation path)."""
        return self.kind != Kind.ci

    @property
    def in_cluster_backups(self) -> bool:
        """The backup CronJob of the in-cluster Postgres: cloud none, not ci, unless set."""
        return _pick(self.tracking.database.backup.enabled, self.cloud == Cloud.none and self.kind != Kind.ci)

    @property
    def namespace(self) -> str:
        return f"mlops-{self.name}"

    @property
    def resource_tags(self) -> dict[str, str]:
        """Applied to every taggable AWS resource (through the provider's default tags)."""
        return {
            **self.tags.extra,
            "owner": self.tags.owner,
            "cost-center": self.tags.cost_center,
            "environment": self.name,
            "managed-by": "pulumi",
            "project": PROJECT,
        }


class Secrets:
    """The environment's secrets: only ever `pulumi.Output`s marked secret."""

    def __init__(self, config: pulumi.Config, env: EnvironmentConfig):
        self.tracking_admin_password: pulumi.Output[str] = _require_secret(config, "trackingAdminPassword")
        self.database_password: pulumi.Output[str] | None = _optional_secret(config, "databasePassword")
        if not env.in_cluster_database:  # RDS refuses these in a master password (the DSN could carry them)
            _check_rds_password(config.get("databasePassword"))
        self.kubeconfig: pulumi.Output[str] | None = _optional_secret(config, "kubeconfig")
        # Required with in-cluster backups: without it nothing could decrypt them after a teardown.
        self.backup_passphrase: pulumi.Output[str] | None = (
            _require_secret(config, PASSPHRASE_KEY) if env.in_cluster_backups else None)


def _all_config() -> dict[str, Any]:
    """Every config key of this stack: the language host passes them in PULUMI_CONFIG."""
    return {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}


def _is_secret(full_key: str) -> bool:
    return pulumi.runtime.is_config_secret(full_key) or full_key in pulumi.runtime.config.get_config_secret_keys_env()


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _plain_text_problem(config: pulumi.Config, key: str) -> str | None:
    full = f"{PROJECT}:{key}"
    if not _is_secret(full):
        return f"{full}: is stored in plain text; set it with `pulumi config set --secret {key} <value>`"
    if not config.get(key):
        return f"{full}: is empty; set it with `pulumi config set --secret {key} <value>` or remove it"
    return None


def _check_rds_password(password: str | None) -> None:
    refused = sorted({c for c in password or "" if c in "/@\"' " or not c.isprintable() or not c.isascii()})
    if refused:
        shown = ", ".join(repr(c) for c in refused)
        raise ConfigError(f"{PROJECT}:databasePassword: contains {shown}; an RDS master password is printable "
                          "ASCII without / @ \" ' or spaces")


def _optional_secret(config: pulumi.Config, key: str) -> pulumi.Output[str] | None:
    if config.get(key) is None:
        return None
    problem = _plain_text_problem(config, key)
    if problem:
        raise ConfigError(problem)
    return config.require_secret(key)


def _require_secret(config: pulumi.Config, key: str) -> pulumi.Output[str]:
    full = f"{PROJECT}:{key}"
    if config.get(key) is None:
        raise ConfigError(
            f"{full}: missing; set it with `pulumi config set --secret {key} <value>`"
        )
    problem = _plain_text_problem(config, key)
    if problem:
        raise ConfigError(problem)
    if key == PASSPHRASE_KEY and len(config.get(key) or "") < PASSPHRASE_MIN_LENGTH:
        raise ConfigError(f"{full}: is shorter than {PASSPHRASE_MIN_LENGTH} characters; "
                          "use e.g. `openssl rand -base64 32`")
    if key == "trackingAdminPassword" and len(config.get(key) or "") < 12:
        raise ConfigError(f"{full}: is shorter than 12 characters; MLflow's auth requires at least 12")
    return config.require_secret(key)


def parse_environment(raw: dict[str, Any]) -> EnvironmentConfig:
    """Validate the `mlops-platform:*` keys of a stack (secrets excluded) into the model."""
    try:
        return EnvironmentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, PROJECT, EnvironmentConfig)) from None


def load_environment() -> tuple[EnvironmentConfig, Secrets]:
    """Read and validate this stack's config. Raises ConfigError before anything is registered."""
    config = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    prefix = f"{PROJECT}:"
    for full_key, value in _all_config().items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix):]
        if key in SECRET_KEYS:
            continue
        raw[key] = _decode(value)
    # One region key: the AWS provider's own `aws:region` (the explicit provider and the lookups use it too).
    if "region" in raw:
        raise ConfigError(f"{PROJECT}:region: {raw['region']!r} is not a key; set the region once, as aws:region")
    if aws_region := _all_config().get("aws:region"):
        raw["region"] = aws_region
    env = parse_environment(raw)
    return env, Secrets(config, env)


def _decode(value: Any) -> Any:
    """Structured values arrive JSON-encoded; plain strings arrive as they are."""
    if not isinstance(value, str):
        return value
    if value[:1] in ("{", "[") or value in ("true", "false") or re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
