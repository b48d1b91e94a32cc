"""The tracking server's Postgres: RDS on AWS, or an in-cluster StatefulSet for ci/local.

RDS: encrypted with its own rotating KMS key, in private subnets (a DB subnet group), a
security group that admits only the cluster's security group on 5432, automated backups,
a final snapshot at teardown everywhere but ci (its key is retained: a snapshot outlives the stack and is
useless without it), and in prod and staging multi-AZ, deletion protection and enhanced monitoring (OS
metrics every 60 s). In prod the instance and its key are protected and retained.
`tracking.database.restoreFromSnapshot` creates the instance from a snapshot (README "Backups and
recreation"); the tracking server's init container then upgrades an older schema. In-cluster (ci, local,
cloud: none): one Postgres pod with a persistent volume and its password in a Secret (backups: backup.py).
Either way `Database.uri` is the DSN (a Pulumi secret) the tracking server keeps in its Secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.config import EnvironmentConfig, Secrets
from components.security import container_security_context, pod_security_context, resources, scratch_volume

PORT = 5432
DATABASE = "mlflow"
USERNAME = "mlflow"
POSTGRES_UID = 70  # the postgres user in the alpine image
LABELS = {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/part-of": "mlops-platform"}


@dataclass(frozen=True)
class DatabaseArgs:
    env: EnvironmentConfig
    secrets: Secrets
    namespace: pulumi.Input[str]
    vpc_id: pulumi.Input[str] | None = None
    private_subnet_ids: pulumi.Input[list[str]] | None = None
    cluster_security_group_id: pulumi.Input[str] | None = None


def dsn_password(password: str) -> str:
    """The password as a DSN carries it: every character that is not unreserved, percent-encoded."""
    return quote(password, safe="")


class Database(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]  # host:port
    host: pulumi.Output[str]
    credentials_secret: pulumi.Output[str] | None = None  # in-cluster: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB
    uri: pulumi.Output[str]  # the same DSN, a Pulumi secret (the tracking server's auth config needs it)

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:database:Database", name, None, opts)
        env = args.env
        if args.secrets.database_password is not None:
            password: pulumi.Output[str] = args.secrets.database_password
        else:
            password = random.RandomPassword(f"{name}-password", length=32, special=False,
                                             opts=pulumi.ResourceOptions(parent=self)).result
        if env.in_cluster_database:
            host = self._in_cluster(name, args, password)
        else:
            host = self._rds(name, args, password)
        self.host = pulumi.Output.from_input(host)
        self.endpoint = pulumi.Output.concat(host, ":", str(PORT))
        # Name the driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, the image ships psycopg2.
        # Percent-encoded: a configured password may hold `@`, `/`, `%` or `:`, which would split the URL.
        uri: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.concat(
            "postgresql+psycopg2://", USERNAME, ":", password.apply(dsn_password), "@", host, ":", str(PORT), "/",
            DATABASE,
            "" if env.in_cluster_database else "?sslmode=require"))
        self.uri = uri
        self.register_outputs({"endpoint": self.endpoint})

    def _rds(self, name: str, args: DatabaseArgs, password: pulumi.Output[str]) -> pulumi.Output[str]:
        env = args.env
        db = env.tracking.database
        if args.vpc_id is None or args.private_subnet_ids is None or args.cluster_security_group_id is None:
            raise ValueError("an RDS database needs the VPC, private subnets and the cluster security group")
        child = pulumi.ResourceOptions(parent=self)
        key = self._key(name, env)
        subnets = aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=args.private_subnet_ids, opts=child)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="Postgres for the MLflow tracking server: only the EKS cluster may connect",
            vpc_id=args.vpc_id,
            ingress=[{"protocol": "tcp", "from_port": PORT, "to_port": PORT,
                      "security_groups": [args.cluster_security_group_id],
                      "description": "EKS cluster security group"}],
            egress=[],
            opts=child,
        )
        params = aws.rds.ParameterGroup(
            f"{name}-params", family=f"postgres{db.engine_version.split('.')[0]}",
            parameters=[{"name": "rds.force_ssl", "value": "1"}, {"name": "log_connections", "value": "1"}],
            opts=child,
        )
        prod_like = env.deletion_protection
        interval = env.database_monitoring_interval
        restore = db.restore_from_snapshot
        final = self._final_snapshot_id(name, env)
        monitoring_role = self._monitoring_role(name) if interval else None
        instance = aws.rds.Instance(
            f"{name}-postgres",
            identifier_prefix=f"mlops-{env.name}-",
            engine="postgres",
            engine_version=db.engine_version,
            instance_class=db.instance_class,
            allocated_storage=db.allocated_storage_gb,
            max_allocated_storage=db.allocated_storage_gb * 4,
            storage_type="gp3",
            storage_encrypted=True,
            # Restored: RDS keeps the snapshot's key and cannot change it (another key would force a replacement).
            kms_key_id=None if restore else key.arn,
            snapshot_identifier=restore,
            db_name=DATABASE,
            username=USERNAME,
            password=password,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[group.id],
            parameter_group_name=params.name,
            publicly_accessible=False,
            multi_az=env.multi_az_database,
            backup_retention_period=env.backup_retention_days,
            copy_tags_to_snapshot=True,
            deletion_protection=env.deletion_protection,
            skip_final_snapshot=final is None,
            final_snapshot_identifier=final,
            iam_database_authentication_enabled=True,
            performance_insights_enabled=True,
            performance_insights_kms_key_id=key.arn,
            auto_minor_version_upgrade=True,
            enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
            apply_immediately=not prod_like,
            monitoring_interval=interval,
            monitoring_role_arn=monitoring_role.arn if monitoring_role else None,
            opts=pulumi.ResourceOptions(parent=self, protect=env.protect, retain_on_delete=env.retain_on_delete),
        )
        return instance.address

    def _key(self, name: str, env: EnvironmentConfig) -> aws.kms.Key:
        # Retained with what it decrypts: the instance (prod) and its final snapshot (every kind but ci).
        return aws.kms.Key(f"{name}-key", description=f"mlops-platform {env.name}: tracking database",
                           enable_key_rotation=True, deletion_window_in_days=30 if env.protect else 7,
                           opts=pulumi.ResourceOptions(parent=self, protect=env.protect,
                                                       retain_on_delete=env.retain_on_delete or env.rds_final_snapshot))

    def _final_snapshot_id(self, name: str, env: EnvironmentConfig) -> pulumi.Output[str] | None:
        """One suffix per instance: a recreated environment's final snapshot never collides with its source."""
        if not env.rds_final_snapshot:
            return None
        suffix = random.RandomId(f"{name}-final-snapshot", byte_length=4, opts=pulumi.ResourceOptions(parent=self))
        return pulumi.Output.concat(f"mlops-{env.name}-tracking-final-", suffix.hex)

    def _monitoring_role(self, name: str) -> aws.iam.Role:
        """RDS enhanced monitoring publishes OS metrics to CloudWatch Logs through this role."""
        return aws.iam.Role(
            f"{name}-monitoring",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "monitoring.rds.amazonaws.com"},
                "Action": "sts:AssumeRole"}]}),
            managed_policy_arns=["arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"],
            opts=pulumi.ResourceOptions(parent=self))

    def _in_cluster(self, name: str, args: DatabaseArgs, password: pulumi.Output[str]) -> pulumi.Output[str]:
        env = args.env
        db = env.tracking.database
        child = pulumi.ResourceOptions(parent=self)
        secret = k8s.core.v1.Secret(
            f"{name}-credentials",
            metadata={"name": "postgres-credentials", "namespace": args.namespace, "labels": LABELS},
            string_data={"POSTGRES_USER": USERNAME, "POSTGRES_PASSWORD": password, "POSTGRES_DB": DATABASE},
            opts=child,
        )
        self.credentials_secret = secret.metadata["name"]
        service = k8s.core.v1.Service(
            f"{name}-postgres",
            metadata={"name": "postgres", "namespace": args.namespace, "labels": LABELS},
            spec={"selector": LABELS, "ports": [{"name": "postgres", "port": PORT, "targetPort": "postgres"}]},
            opts=child,
        )
        ready = ["pg_isready", "-U", USERNAME, "-d", DATABASE, "-h", "127.0.0.1"]
        k8s.apps.v1.StatefulSet(
            f"{name}-postgres",
            metadata={"name": "postgres", "namespace": args.namespace, "labels": LABELS},
            spec={
                "serviceName": "postgres",
                "replicas": 1,
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security_context(POSTGRES_UID),
                        "containers": [{
                            "name": "postgres",
                            "image": db.image,
                            "envFrom": [{"secretRef": {"name": secret.metadata["name"]}}],
                            "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                            "ports": [{"name": "postgres", "containerPort": PORT}],
                            "readinessProbe": {"exec": {"command": ready}, "periodSeconds": 5},
                            "livenessProbe": {"exec": {"command": ready}, "initialDelaySeconds": 30,
                                              "periodSeconds": 10},
                            "resources": resources("250m", "512Mi"),
                            "securityContext": container_security_context(POSTGRES_UID),
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                             {"name": "run", "mountPath": "/var/run/postgresql"},
                                             {"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [scratch_volume("run", "16Mi"), scratch_volume()],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": db.volume_size}}},
                }],
            },
            opts=pulumi.ResourceOptions(parent=self, protect=env.protect, retain_on_delete=env.retain_on_delete),
        )
        return pulumi.Output.concat(service.metadata["name"], ".", args.namespace, ".svc.cluster.local")
