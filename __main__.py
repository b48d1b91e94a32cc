"""mlops-platform: one MLOps environment per stack. This file only composes components.

Two layers, in order: the AWS layer (network, EKS through its API, the deploy runner, the registry,
the budget) and the Kubernetes layer (everything applied through the cluster's API). The API is
private, so a new account's first `pulumi up` sets `deploy.bootstrap` and stops after the AWS
layer; every later `pulumi up` runs on the runner inside the VPC (README "Deploy").
"""

import pulumi
import pulumi_aws as aws

from components.backup import BackupArgs, TrackingBackup
from components.budget import Budget, BudgetArgs
from components.cluster import Cluster, ClusterArgs
from components.cluster_services import ClusterServices, ClusterServicesArgs
from components.config import Cloud, load_environment
from components.database import Database, DatabaseArgs
from components.jobs import Jobs, JobsArgs
from components.namespace import EnvironmentNamespace, NamespaceArgs
from components.netpol import NetworkPolicies, NetworkPoliciesArgs
from components.network import Network, NetworkArgs
from components.observability import Observability, ObservabilityArgs
from components.podenv import ContractValues
from components.registry import Registry, RegistryArgs
from components.runner import DeployRunner, RunnerArgs
from components.serving import Serving, ServingArgs
from components.storage import Storage, StorageArgs
from components.tracking import TrackingArgs, TrackingServer

env, secrets = load_environment()
on_aws = env.cloud == Cloud.aws

providers: dict[str, pulumi.ProviderResource] = {}
network = None
if on_aws:
    # One explicit provider carries the environment's tags onto every taggable resource.
    providers["aws"] = aws.Provider("aws", region=env.region, default_tags={"tags": env.resource_tags})
    if env.cluster.mode == "create":
        network = Network("network", NetworkArgs.of(env), pulumi.ResourceOptions(providers=providers))

cluster = Cluster(
    "cluster",
    ClusterArgs(env, secrets, vpc_id=network.vpc_id if network else None,
                private_subnet_ids=network.private_subnet_ids if network else None),
    pulumi.ResourceOptions(providers=providers),
)
aws_opts = pulumi.ResourceOptions(providers=providers)
if network is not None and cluster.security_group_id is not None:
    # The only place the private API is reached from: the Kubernetes layer is applied there.
    DeployRunner("runner", RunnerArgs(env.name, env.region, env.deploy.runner_instance_type, network.vpc_id,
                                      network.private_subnet_ids, cluster.security_group_id, env.resource_tags),
                 aws_opts)
if env.creates_registry:
    registry = Registry("registry", RegistryArgs(env.registry, env.name, env.protect, env.retain_on_delete), aws_opts)
    pulumi.export("registry_url", registry.repository_url)
if on_aws:
    # A monthly AWS Budgets budget on this environment's tag, alerting its notification target.
    Budget("budget", BudgetArgs(env), aws_opts)
    # What a ci stack's StackReference (cluster.mode: existing) reads from the stack owning the cluster.
    pulumi.export("oidc_provider_arn", cluster.oidc.arn if cluster.oidc else None)
    pulumi.export("oidc_provider_url", cluster.oidc.url if cluster.oidc else None)
    pulumi.export("vpc_id", cluster.vpc_id)
    pulumi.export("private_subnet_ids", cluster.private_subnet_ids)
    pulumi.export("cluster_security_group_id", cluster.security_group_id)
pulumi.export("environment", env.name)
pulumi.export("cluster_name", cluster.name)
pulumi.export("kubeconfig", pulumi.Output.secret(cluster.kubeconfig) if cluster.kubeconfig is not None else None)
pulumi.export("training_pools", cluster.training_pools)
pulumi.export("network_policy_enforcement", cluster.network_policy_enforcement)
pulumi.export("bootstrap", env.deploy.bootstrap)

# --- the Kubernetes layer (not in a bootstrap pass: nothing outside the VPC reaches the API) ----------
if not env.deploy.bootstrap:
    # Every Kubernetes resource goes through the one provider built from the cluster output.
    opts = pulumi.ResourceOptions(providers={**providers, "kubernetes": cluster.provider})
    if env.cluster.mode == "create" and cluster.autoscaler_role_arn is not None:
        ClusterServices("services", ClusterServicesArgs(
            env.cluster, env.deploy, cluster.name, env.region, cluster.autoscaler_role_arn,
            retain_volumes=env.retain_on_delete), opts)
    namespace = EnvironmentNamespace("namespace", NamespaceArgs(
        env.namespace, env.name, small=env.kind in ("ci", "local"), retain_on_delete=env.retain_on_delete,
        bind_ci_deployers=env.cluster.mode == "existing"), opts)
    storage = Storage("storage", StorageArgs.of(env, namespace.name), opts)
    database = Database("database", DatabaseArgs(
        env, secrets, namespace.name, vpc_id=cluster.vpc_id, private_subnet_ids=cluster.private_subnet_ids,
        cluster_security_group_id=cluster.security_group_id), opts)
    if env.in_cluster_backups:
        # Encrypted dumps of the in-cluster Postgres in the artifact bucket, and the restore template.
        TrackingBackup("backup", BackupArgs.of(
            env, secrets, namespace.name, database_host=database.host, database_secret=database.credentials_secret,
            bucket=storage.artifact_bucket, s3_endpoint=storage.s3_endpoint,
            s3_credentials_secret=storage.credentials_secret), opts)
    tracking = TrackingServer("tracking", TrackingArgs(
        env, secrets, namespace.name,
        artifact_bucket=storage.artifact_bucket, artifact_bucket_arn=storage.bucket_arns["artifacts"],
        database_uri=database.uri, kms_key_arn=storage.kms_key_arn, oidc=cluster.oidc,
        s3_endpoint=storage.s3_endpoint, s3_credentials_secret=storage.credentials_secret), opts)
    # What every workload pod sees as MLOPS_* / MLFLOW_* environment variables (the outputs contract).
    contract = ContractValues(
        environment=env.name, namespace=env.namespace, tracking_uri=tracking.tracking_uri,
        data_bucket=storage.data_bucket, artifact_bucket=storage.artifact_bucket,
        capture_bucket=storage.capture_bucket, cluster_name=cluster.name,
        tracking_credentials_secret=tracking.credentials_secret, region=env.region if on_aws else None,
        kms_key_arn=storage.kms_key_arn, s3_endpoint=storage.s3_endpoint,
        s3_credentials_secret=storage.credentials_secret)
    serving = Serving("serving", ServingArgs(
        env, namespace.name, contract, artifact_bucket_arn=storage.bucket_arns["artifacts"],
        capture_bucket_arn=storage.bucket_arns["capture"], oidc=cluster.oidc), opts)
    jobs = Jobs("jobs", JobsArgs(
        env, namespace.name, contract, data_bucket_arn=storage.bucket_arns["data"],
        artifact_bucket_arn=storage.bucket_arns["artifacts"], capture_bucket_arn=storage.bucket_arns["capture"],
        oidc=cluster.oidc), opts)
    NetworkPolicies("netpol", NetworkPoliciesArgs.of(env, namespace.name), opts)
    # Scraping, dashboards and alert rules; with observability.enabled, the monitoring stack itself.
    Observability("observability", ObservabilityArgs(env, namespace.name), opts)

    # The stack outputs contract: workloads and CI read these names (README: "Stack outputs").
    pulumi.export("data_bucket", storage.data_bucket)
    pulumi.export("artifact_bucket", storage.artifact_bucket)
    pulumi.export("capture_bucket", storage.capture_bucket)
    pulumi.export("s3_endpoint", storage.s3_endpoint)
    pulumi.export("kms_key_arn", storage.kms_key_arn)
    pulumi.export("namespace", namespace.name)
    pulumi.export("tracking_uri", tracking.tracking_uri)
    pulumi.export("tracking_url", tracking.tracking_url)
    pulumi.export("serving_endpoints", serving.endpoints)
    pulumi.export("database_endpoint", database.endpoint)
    pulumi.export("training_jobs", jobs.training)  # job -> suspended CronJob to `kubectl create job --from`
    pulumi.export("monitoring_cronjobs", jobs.monitoring)  # endpoint -> CronJob
