"""Environment config: every stack file validates, and malformed configs fail fast.

A bad config must stop the program before any resource is registered, with one message
naming the stack file key path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from components.config import ConfigError, EnvironmentConfig, Kind, parse_environment
from components.render import load_stack_config, render_stack, stack_file
from tests.infra.helpers import manifests

STACKS = ["dev", "staging", "prod", "ci", "local"]
PASSWORD = "correct-horse-battery-staple"


def dev_config() -> dict[str, Any]:
    return copy.deepcopy(load_stack_config(stack_file("dev")))


def with_changes(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `{"mlops-platform:serving.endpoints[0].replicas.min": -1}`-style edits; None deletes."""
    config = copy.deepcopy(base)
    for dotted, value in changes.items():
        top, _, rest = dotted.partition(".")
        if not rest:
            if value is None:
                config.pop(top, None)
            else:
                config[top] = value
            continue
        node = config[top]
        parts = rest.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if value is None:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return config


def render_config(config: dict[str, Any], secrets: dict[str, str] | None = None):
    return render_stack("custom", config=config, secrets={"trackingAdminPassword": PASSWORD} if secrets is None else secrets)


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_validates(stack: str) -> None:
    raw = {key.removeprefix("mlops-platform:"): value
           for key, value in load_stack_config(stack_file(stack)).items()
           if key.startswith("mlops-platform:") and not (isinstance(value, dict) and "secure" in value)}
    env = parse_environment(raw)
    assert env.name == stack
    assert env.kind == Kind(stack)


def test_kind_defaults() -> None:
    base = {"name": "x", "tags": {"owner": "o", "costCenter": "c"}}
    prod = EnvironmentConfig.model_validate({**base, "kind": "prod"})
    ci = EnvironmentConfig.model_validate({**base, "kind": "ci"})
    dev = EnvironmentConfig.model_validate({**base, "kind": "dev"})
    assert (prod.protect, prod.retain_on_delete, prod.deletion_protection, prod.force_destroy) == (True, True, True, False)
    assert (prod.az_count, prod.multi_az_database, prod.flow_logs) == (3, True, True)
    assert (ci.protect, ci.force_destroy, ci.in_cluster_database) == (False, True, True)
    assert (dev.protect, dev.force_destroy, dev.az_count) == (False, False, 2)
    assert prod.resource_tags["environment"] == "x" and prod.resource_tags["cost-center"] == "c"


LONG = "a" * 40
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    # --- keys and types
    ("unknown top-level key", {"mlops-platform:trackin": {"replicas": 2}},
     "mlops-platform:trackin: is not a known key (check the spelling); known keys here: budget, cloud, cluster"),
    ("unknown nested key", {"mlops-platform:serving.endpoints[0].replica": 2},
     "mlops-platform:serving.endpoints[0].replica: 2 is not a known key (check the spelling); known keys here: "
     "alias, capture, cpu, host, maxBatchRows"),
    ("wrong type", {"mlops-platform:tracking.replicas": "three"},
     "mlops-platform:tracking.replicas: \"three\" is not a whole number (allowed: from 1 up to 20)"),
    ("fraction for a whole number", {"mlops-platform:tracking.workers": 2.5},
     "mlops-platform:tracking.workers: 2.5 is not a whole number (allowed: from 1 up to 32)"),
    ("section written as a list", {"mlops-platform:tracking": [{"replicas": 2}]},
     "mlops-platform:tracking: [{\"replicas\": 2}] must be a mapping of keys to values"),
    ("list written as a string", {"mlops-platform:cluster.systemPool": {"instanceTypes": "m6i.large"}},
     "mlops-platform:cluster.systemPool.instanceTypes: \"m6i.large\" must be a list, e.g. [a, b]"),
    ("empty instance type list", {"mlops-platform:cluster.trainingPools[0].instanceTypes": []},
     "mlops-platform:cluster.trainingPools[0].instanceTypes: [] list should have at least 1 item"),
    ("boolean that is not one", {"mlops-platform:serving.endpoints[0].capture": "maybe"},
     "mlops-platform:serving.endpoints[0].capture: \"maybe\" is not a boolean; use true or false"),
    ("version read as a number", {"mlops-platform:cluster.version": 1.3},
     "mlops-platform:cluster.version: 1.3 was read by YAML as the number 1.3; write it in quotes"),
    ("Kubernetes version that does not exist", {"mlops-platform:cluster.version": "1.99"},
     "mlops-platform:cluster.version: \"1.99\" is not a Kubernetes version EKS offers; use one of 1.23 to 1.36, "
     "quoted (\"1.31\")"),
    ("image tag read as a number", {"mlops-platform:workloads.imageTag": 1.0},
     "mlops-platform:workloads.imageTag: 1.0 was read by YAML as the number 1.0; write it in quotes"),
    ("unknown environment kind", {"mlops-platform:kind": "production"},
     "mlops-platform:kind: \"production\" is not allowed; expected one of 'dev', 'staging', 'prod', 'ci' or 'local'"),
    ("missing tags", {"mlops-platform:tags": None},
     "mlops-platform:tags: is required"),
    # --- numbers: finite, bounded
    ("negative replicas", {"mlops-platform:serving": {"endpoints": [
        {"name": "a", "model": "a"}, {"name": "b", "model": "b", "replicas": {"min": -1}}]}},
     "mlops-platform:serving.endpoints[1].replicas.min: -1 is below 0 (allowed: from 0 to 100)"),
    ("negative size", {"mlops-platform:storage.noncurrentVersionDays": -5},
     "mlops-platform:storage.noncurrentVersionDays: -5 is below 1 (allowed: from 1 up to 3650)"),
    ("1e30 for a float", {"mlops-platform:workloads.monitoring.psiThreshold": 1e30},
     "mlops-platform:workloads.monitoring.psiThreshold: 1e+30 is above 100 (allowed: more than 0 up to 100)"),
    ("1e30 for an integer", {"mlops-platform:workloads.training[0].activeDeadlineSeconds": 1e30},
     "mlops-platform:workloads.training[0].activeDeadlineSeconds: 1e+30 is too large (allowed: from 60 up to "
     "2592000)"),
    ("1e30 written as text", {"mlops-platform:workloads.monitoring.minRows": "1e30"},
     "mlops-platform:workloads.monitoring.minRows: \"1e30\" is not a whole number (allowed: from 1 up to 100000000)"),
    (".inf for a float", {"mlops-platform:workloads.monitoring.cooldownHours": float("inf")},
     "mlops-platform:workloads.monitoring.cooldownHours: Infinity is not a finite number (allowed: from 0 to 2160)"),
    ("nan for a float", {"mlops-platform:workloads.monitoring.driftShare": float("nan")},
     "mlops-platform:workloads.monitoring.driftShare: NaN is not a finite number (allowed: more than 0 up to 1)"),
    ("-inf for a float", {"mlops-platform:serving.endpoints[0].maxWaitMs": float("-inf")},
     "mlops-platform:serving.endpoints[0].maxWaitMs: -Infinity is not a finite number (allowed: from 0 to 1000)"),
    ("inf for an integer", {"mlops-platform:cluster.trainingPools[0].maxSize": float("inf")},
     "mlops-platform:cluster.trainingPools[0].maxSize: Infinity is not a finite number (allowed: from 1 up to 200)"),
    # --- min <= max, wherever there is a pair
    ("training pool min above max", {"mlops-platform:cluster.trainingPools[0].minSize": 9},
     "mlops-platform:cluster.trainingPools[0].minSize: 9 is above maxSize 6; minSize <= maxSize"),
    ("system pool min above max", {"mlops-platform:cluster.systemPool": {"minSize": 5, "maxSize": 3}},
     "mlops-platform:cluster.systemPool.minSize: 5 is above maxSize 3; minSize <= maxSize"),
    ("endpoint replicas min above max", {"mlops-platform:serving.endpoints[0].replicas": {"min": 4, "max": 2}},
     "mlops-platform:serving.endpoints[0].replicas.min: 4 is above max 2; min <= max"),
    # --- Kubernetes quantities
    ("memory in millibytes", {"mlops-platform:serving.endpoints[0].memory": "512m"},
     "mlops-platform:serving.endpoints[0].memory: \"512m\" is 0.512 bytes ('m' means milli); use a whole number "
     "with Ki, Mi, Gi or Ti (e.g. 512Mi, 2Gi), from 32Mi to 1Ti"),
    ("training memory in millibytes", {"mlops-platform:workloads.training[0].memory": "4096m"},
     "mlops-platform:workloads.training[0].memory: \"4096m\" is 4.096 bytes ('m' means milli)"),
    ("memory with a unit Kubernetes lacks", {"mlops-platform:tracking.memory": "1GB"},
     "mlops-platform:tracking.memory: \"1GB\" is not a size in bytes; use a whole number with Ki, Mi, Gi or Ti"),
    ("memory too small to run", {"mlops-platform:tracking.memory": "16Mi"},
     "mlops-platform:tracking.memory: \"16Mi\" is outside the allowed size; use a whole number with Ki, Mi, Gi or Ti "
     "(e.g. 512Mi, 2Gi), from 32Mi to 1Ti"),
    ("fractional bytes", {"mlops-platform:tracking.memory": "0.3Ki"},
     "mlops-platform:tracking.memory: \"0.3Ki\" is not a size in bytes"),
    ("CPU given as memory", {"mlops-platform:serving.endpoints[0].cpu": "2Gi"},
     "mlops-platform:serving.endpoints[0].cpu: \"2Gi\" is not a CPU amount; use cores (\"2\", \"0.5\") or "
     "millicores (\"500m\"), from 10m to 192"),
    ("zero CPU", {"mlops-platform:workloads.training[0].cpu": "0"},
     "mlops-platform:workloads.training[0].cpu: \"0\" is outside the CPU range; use cores"),
    ("volume below a gibibyte", {"mlops-platform:storage.minioVolumeSize": "500Mi"},
     "mlops-platform:storage.minioVolumeSize: \"500Mi\" is outside the allowed size; use a whole number with Ki, Mi, "
     "Gi or Ti (e.g. 512Mi, 2Gi), from 1Gi to 16Ti"),
    ("database volume in millibytes", {"mlops-platform:tracking.database": {"volumeSize": "10m"}},
     "mlops-platform:tracking.database.volumeSize: \"10m\" is 0.01 bytes ('m' means milli); use a whole number "
     "with Ki, Mi, Gi or Ti (e.g. 512Mi, 2Gi), from 1Gi to 16Ti"),
    # --- names and what is derived from them
    ("endpoint name not DNS", {"mlops-platform:serving.endpoints[0].name": "Churn_Model"},
     "mlops-platform:serving.endpoints[0].name: \"Churn_Model\" is not a DNS label: use lowercase letters, digits "
     "and '-', starting with a letter and ending with a letter or digit, at most 44 characters"),
    ("40-character training job name", {"mlops-platform:workloads.training[0].name": LONG,
                                        "mlops-platform:workloads.monitoring.retrainJob": LONG},
     f"mlops-platform:workloads.training[0].name: \"{LONG}\" is 40 characters; at most 39 fit because the CronJob "
     "train-<name>-select must fit Kubernetes' 52-character CronJob limit"),
    ("45-character endpoint name", {"mlops-platform:serving.endpoints[0].name": "e" * 45},
     "mlops-platform:serving.endpoints[0].name: \"" + "e" * 45 + "\" is 45 characters; at most 44 fit because the "
     "CronJob monitor-<name> must fit"),
    ("48-character pool name", {"mlops-platform:cluster.trainingPools[1].name": "p" * 48,
                                "mlops-platform:cluster.trainingPools[1].gpu": True},
     "mlops-platform:cluster.trainingPools[1].name: \"" + "p" * 48 + "\" is 48 characters; at most 47 fit because "
     "EKS names node groups cluster-<pool>-<7 hex>"),
    ("environment name too long for RDS", {"mlops-platform:name": "n" * 31},
     "mlops-platform:name: '" + "n" * 31 + "' must be at most 30 characters without '--' because RDS builds its "
     "identifier mlops-<name>-<26 characters> (<= 63)"),
    ("environment name with -- for RDS", {"mlops-platform:name": "dev--a"},
     "mlops-platform:name: 'dev--a' must be at most 30 characters without '--'"),
    ("environment name too long for MinIO's buckets", {"mlops-platform:name": "n" * 48, "mlops-platform:cloud": "none",
                                                        "mlops-platform:cluster": {"mode": "kubeconfig"}},
     "mlops-platform:name: '" + "n" * 48 + "' must be at most 47 characters because MinIO's bucket "
     "mlops-<name>-artifacts must be at most 63"),
    ("environment name too long for a namespace", {"mlops-platform:name": "n" * 58},
     "mlops-platform:name: \"" + "n" * 58 + "\" is 58 characters; at most 57 fit because the namespace mlops-<name>"),
    ("pool named like the built-in pool", {"mlops-platform:cluster.trainingPools[0].name": "system",
                                           "mlops-platform:workloads.training[0].pool": "system"},
     "mlops-platform:cluster.trainingPools[0].name: \"system\" is the built-in pool's name; choose another "
     "(reserved: ['system'])"),
    ("pool names repeated", {"mlops-platform:cluster.trainingPools[1].name": "cpu",
                             "mlops-platform:cluster.trainingPools[1].gpu": True},
     "mlops-platform:cluster.trainingPools[1].name: 'cpu' is already used by trainingPools[0]; names must be unique"),
    ("endpoint names repeated", {"mlops-platform:serving.endpoints": [{"name": "churn", "model": "churn"},
                                                                {"name": "churn", "model": "other"}]},
     "mlops-platform:serving.endpoints[1].name: 'churn' is already used by endpoints[0]; names must be unique"),
    ("training job names repeated", {"mlops-platform:workloads.training": [{"name": "churn", "spec": "/a.yaml"},
                                                                    {"name": "churn", "spec": "/b.yaml"}]},
     "mlops-platform:workloads.training[1].name: 'churn' is already used by training[0]; names must be unique"),
    # --- AWS identifiers and instance types
    ("subnet ids given as CIDRs", {"mlops-platform:network": {
        "mode": "existing", "vpcId": "vpc-0123456789abcdef0", "privateSubnetIds": ["10.10.1.0/24"]}},
     "mlops-platform:network.privateSubnetIds[0]: \"10.10.1.0/24\" is a CIDR block; give the subnet id such as "
     "subnet-0123456789abcdef0"),
    ("VPC id that is a name", {"mlops-platform:network": {
        "mode": "existing", "vpcId": "main-vpc", "privateSubnetIds": ["subnet-0123456789abcdef0"]}},
     "mlops-platform:network.vpcId: \"main-vpc\" is not a vpc id; give one such as vpc-0123456789abcdef0"),
    ("VPC id the mode ignores", {"mlops-platform:network.vpcId": "vpc-0123456789abcdef0"},
     "mlops-platform:network.vpcId: is only used with mode 'existing', not 'create'; remove it or change mode"),
    ("bad CIDR", {"mlops-platform:network.cidr": "10.0.0.0/33"},
     "mlops-platform:network.cidr: \"10.0.0.0/33\" is not an IPv4 CIDR block"),
    ("instance type with a dash", {"mlops-platform:cluster.systemPool": {"instanceTypes": ["m6i-large"]}},
     "mlops-platform:cluster.systemPool.instanceTypes[0]: \"m6i-large\" is not an EC2 instance type; write "
     "family.size, e.g. m6i.large or g5.xlarge"),
    ("Arm instance type on x86 nodes", {"mlops-platform:cluster.trainingPools[0].instanceTypes": ["c7g.2xlarge"]},
     "mlops-platform:cluster.trainingPools[0].instanceTypes[0]: \"c7g.2xlarge\" is an Arm (Graviton) type"),
    ("gpu on a CPU instance type", {"mlops-platform:cluster.trainingPools[0].gpu": True},
     "mlops-platform:cluster.trainingPools[0].instanceTypes: ['c6i.2xlarge', 'c6a.2xlarge'] have no NVIDIA GPU but "
     "gpu is true; use GPU types such as g5.xlarge or g6.xlarge, or set gpu: false"),
    ("AMD GPU type on the NVIDIA AMI", {"mlops-platform:cluster.trainingPools[1].instanceTypes": ["g4ad.xlarge"]},
     "mlops-platform:cluster.trainingPools[1].instanceTypes: ['g4ad.xlarge'] have no NVIDIA GPU but gpu is true"),
    ("GPU type on a CPU pool", {"mlops-platform:cluster.trainingPools[1].gpu": False},
     "mlops-platform:cluster.trainingPools[1].instanceTypes: ['g5.xlarge'] are GPU types on a CPU pool"),
    ("GPU type in the system pool", {"mlops-platform:cluster.systemPool": {"instanceTypes": ["g5.xlarge"]}},
     "mlops-platform:cluster.systemPool.instanceTypes: ['g5.xlarge'] are GPU types on a CPU pool"),
    ("GPUs requested from a CPU pool", {"mlops-platform:workloads.training[0].gpus": 1},
     "mlops-platform:workloads.training[0].gpus: 1 but pool 'cpu' has no GPUs; use a pool with gpu: true or gpus: 0"),
    ("DB class without db.", {"mlops-platform:tracking.database": {"instanceClass": "t4g.medium"}},
     "mlops-platform:tracking.database.instanceClass: \"t4g.medium\" is not an RDS instance class; classes start "
     "with 'db.', e.g. db.t4g.medium"),
    ("PostgreSQL out of support", {"mlops-platform:tracking.database": {"engineVersion": "12"}},
     "mlops-platform:tracking.database.engineVersion: \"12\" is not an RDS PostgreSQL version in standard support; "
     "use a major from 14 to 18"),
    ("PostgreSQL version read as a number", {"mlops-platform:tracking.database": {"engineVersion": 16.1}},
     "mlops-platform:tracking.database.engineVersion: 16.1 was read by YAML as the number 16.1"),
    ("SNS topic that is not an ARN", {"mlops-platform:workloads.monitoring.alertSnsTopicArn": "alerts"},
     "mlops-platform:workloads.monitoring.alertSnsTopicArn: \"alerts\" does not match the pattern ^arn:aws"),
    # --- cluster modes
    ("public API endpoint open to the internet", {"mlops-platform:cluster.publicAccessCidrs": ["0.0.0.0/0"]},
     "mlops-platform:cluster.publicAccessCidrs: [\"0.0.0.0/0\"] '0.0.0.0/0' opens the API server to the internet"),
    ("cloud none with an EKS cluster", {"mlops-platform:cloud": "none"},
     "mlops-platform:cluster.mode: 'create' must be 'kubeconfig' when cloud is 'none'"),
    ("existing cluster without a stack reference", {"mlops-platform:cluster": {"mode": "existing"}},
     "mlops-platform:cluster: mode 'existing' needs stackReference"),
    ("stack reference the mode ignores", {"mlops-platform:cluster.stackReference": "org/mlops-platform/dev"},
     "mlops-platform:cluster.stackReference: is only used with mode 'existing', not 'create'"),
    ("kubeconfig context on EKS", {"mlops-platform:cluster.context": "kind-kind"},
     "mlops-platform:cluster.context: is only used with mode 'kubeconfig', not 'create'"),
    ("training pools on an existing cluster", {"mlops-platform:cluster.mode": "existing",
                                              "mlops-platform:cluster.stackReference": "org/mlops-platform/dev"},
     "mlops-platform:cluster.trainingPools: is only used with mode 'create', not 'existing'"),
    ("unknown training pool", {"mlops-platform:workloads.training[0].pool": "tpu"},
     "mlops-platform:workloads.training[0].pool: 'tpu' names unknown pool; known: ['cpu', 'gpu']"),
    ("retraining an unknown job", {"mlops-platform:workloads.monitoring.retrainJob": "fraud"},
     "mlops-platform:workloads.monitoring.retrainJob: 'fraud' is not a training job; known: ['churn']"),
    ("force destroy outside ci", {"mlops-platform:protection": {"forceDestroy": True}},
     "mlops-platform:protection.forceDestroy: true is only allowed for kind ci, not dev"),
    # --- images
    ("latest image tag", {"mlops-platform:workloads.imageTag": "latest"},
     "mlops-platform:workloads.imageTag: \"latest\" 'latest' is not allowed: pin a version"),
    ("image repository with spaces", {"mlops-platform:workloads.image": "ghcr.io/mlops platform/workloads"},
     "mlops-platform:workloads.image: \"ghcr.io/mlops platform/workloads\" is not an image repository: "
     "[registry/]path in lowercase, no spaces or tag"),
    ("image repository with a tag", {"mlops-platform:workloads.image": "ghcr.io/mlops-platform/workloads:0.1.0"},
     "mlops-platform:workloads.image: \"ghcr.io/mlops-platform/workloads:0.1.0\" is not an image repository"),
    ("image reference with spaces", {"mlops-platform:tracking.database": {"image": "postgres:16 alpine"}},
     "mlops-platform:tracking.database.image: \"postgres:16 alpine\" is not an image reference; use "
     "repository:tag or repository@sha256:<digest>"),
    ("image without a tag", {"mlops-platform:storage.minioImage": "quay.io/minio/minio"},
     "mlops-platform:storage.minioImage: \"quay.io/minio/minio\" has no tag, so it means 'latest'; pin it"),
    ("image pinned to latest", {"mlops-platform:storage.minioClientImage": "quay.io/minio/mc:latest"},
     "mlops-platform:storage.minioClientImage: \"quay.io/minio/mc:latest\" 'latest' is not allowed"),
    # --- hosts and URLs
    ("URL where a host is expected", {"mlops-platform:tracking.host": "https://mlflow.example.com"},
     "mlops-platform:tracking.host: \"https://mlflow.example.com\" is a URL; give only the host name, e.g. "
     "mlflow.example.com"),
    ("host with a port", {"mlops-platform:serving.endpoints[0].host": "churn.example.com:443"},
     "mlops-platform:serving.endpoints[0].host: \"churn.example.com:443\" has a port; give only the host name"),
    ("IP address as an Ingress host", {"mlops-platform:tracking.host": "203.0.113.10"},
     "mlops-platform:tracking.host: \"203.0.113.10\" is an IP address; Ingress rules need a DNS name"),
    ("host in capitals", {"mlops-platform:tracking.host": "MLflow.Example.com"},
     "mlops-platform:tracking.host: \"MLflow.Example.com\" is not a DNS name (lowercase labels"),
    ("TLS secret that is not a name", {"mlops-platform:tracking.tlsSecretName": "TLS secret"},
     "mlops-platform:tracking.tlsSecretName: \"TLS secret\" does not match the pattern"),
    ("webhook that is not a URL", {"mlops-platform:workloads.monitoring.alertWebhook": "#ml-alerts"},
     "mlops-platform:workloads.monitoring.alertWebhook: \"#ml-alerts\" is not a URL; give a full URL such as "
     "https://hooks.example.com/alerts"),
    ("webhook in clear text", {"mlops-platform:workloads.monitoring.alertWebhook": "http://hooks.example.com/a"},
     "mlops-platform:workloads.monitoring.alertWebhook: \"http://hooks.example.com/a\" sends alerts in clear text"),
    # --- the monitor's ground truth: only under labels/<endpoint>/, which only the labeler may write
    ("labels source outside labels/<endpoint>/", {"mlops-platform:serving.endpoints[0].monitorLabels":
                                                 "s3://labeling-team/churn/"},
     "mlops-platform:serving.endpoints[0].monitorLabels: \"s3://labeling-team/churn/\" is outside labels/churn/; "
     "allowed: true (s3://<capture bucket>/labels/churn/), false, or s3://<bucket>/labels/churn/[...]"),
    ("labels source under captures/", {"mlops-platform:serving.endpoints[0].monitorLabels":
                                       "s3://mlops-dev-capture/captures/churn/"},
     "mlops-platform:serving.endpoints[0].monitorLabels: \"s3://mlops-dev-capture/captures/churn/\" is outside "
     "labels/churn/"),
    ("labels source of another endpoint", {"mlops-platform:serving.endpoints[0].monitorLabels":
                                           "s3://labeling-team/labels/churn-eu/"},
     "monitorLabels: \"s3://labeling-team/labels/churn-eu/\" is outside labels/churn/"),
    # --- tags and labels
    ("tag key starting with aws:", {"mlops-platform:tags.extra": {"aws:team": "ml"}},
     "mlops-platform:tags.extra: key 'aws:team' starts with 'aws:', which AWS reserves; choose another key"),
    ("tag key the platform sets", {"mlops-platform:tags.extra": {"environment": "production"}},
     "mlops-platform:tags.extra: key 'environment' is set by the platform; allowed: any key except"),
    ("tag value AWS refuses", {"mlops-platform:tags.owner": "ml-platform; rm"},
     "mlops-platform:tags.owner: \"ml-platform; rm\" is not an AWS tag value"),
    ("node label Kubernetes reserves", {"mlops-platform:cluster.trainingPools[0].labels": {
        "node-role.kubernetes.io/training": "true"}},
     "mlops-platform:cluster.trainingPools[0].labels: key 'node-role.kubernetes.io/training' is reserved"),
    ("node label value with spaces", {"mlops-platform:cluster.trainingPools[0].labels": {"team": "ml platform"}},
     "mlops-platform:cluster.trainingPools[0].labels: value 'ml platform' of 'team' is not a label value"),
    ("admin user name with a newline", {"mlops-platform:tracking.adminUsername": "admin\nroot"},
     "mlops-platform:tracking.adminUsername: \"admin\\nroot\" does not match the pattern"),
    # --- cron
    ("bad cron schedule", {"mlops-platform:workloads.monitoring.schedule": "every hour"},
     "mlops-platform:workloads.monitoring.schedule: \"every hour\" has 2 fields; use five fields 'minute hour "
     "day-of-month month day-of-week' (e.g. '0 * * * *') or @yearly"),
    ("six-field cron", {"mlops-platform:workloads.monitoring.schedule": "0 0 * * * *"},
     "mlops-platform:workloads.monitoring.schedule: \"0 0 * * * *\" has 6 fields; use five fields"),
    ("macro with trailing fields", {"mlops-platform:workloads.monitoring.schedule": "@hourly 5"},
     "mlops-platform:workloads.monitoring.schedule: \"@hourly 5\" is not a cron macro; use five fields"),
    ("cron hour out of range", {"mlops-platform:workloads.monitoring.schedule": "0 24 * * *"},
     "mlops-platform:workloads.monitoring.schedule: \"0 24 * * *\" hour '24' is out of range (allowed 0-23)"),
    ("cron minute out of range", {"mlops-platform:workloads.monitoring.schedule": "60 * * * *"},
     "mlops-platform:workloads.monitoring.schedule: \"60 * * * *\" minute '60' is out of range (allowed 0-59)"),
    ("cron weekday 7", {"mlops-platform:workloads.monitoring.schedule": "0 0 * * 7"},
     "mlops-platform:workloads.monitoring.schedule: \"0 0 * * 7\" day-of-week '7' is out of range (allowed 0-6)"),
    ("cron reversed range", {"mlops-platform:workloads.monitoring.schedule": "0 18-9 * * *"},
     "mlops-platform:workloads.monitoring.schedule: \"0 18-9 * * *\" hour '18-9' is out of range (allowed 0-23)"),
    ("cron step of zero", {"mlops-platform:workloads.monitoring.schedule": "*/0 * * * *"},
     "mlops-platform:workloads.monitoring.schedule: \"*/0 * * * *\" minute '*/0' has a step that is not a number"),
    ("cron unknown month name", {"mlops-platform:workloads.monitoring.schedule": "0 0 1 JUNE *"},
     "mlops-platform:workloads.monitoring.schedule: \"0 0 1 JUNE *\" month 'JUNE' is not a number, range or list"),
    ("cron with a time zone", {"mlops-platform:workloads.monitoring.schedule": "CRON_TZ=UTC 0 * * * *"},
     "mlops-platform:workloads.monitoring.schedule: \"CRON_TZ=UTC 0 * * * *\" has 6 fields"),
]


@pytest.mark.parametrize(("case", "changes", "expected"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_config_is_rejected_before_any_resource(case: str, changes: dict[str, Any], expected: str) -> None:
    config = with_changes(dev_config(), changes)
    with pytest.raises(ConfigError) as caught:
        render_config(config)
    assert expected in str(caught.value), str(caught.value)
    assert caught.value.registered_resources == []  # type: ignore[attr-defined]


def test_missing_required_secret() -> None:
    config = with_changes(dev_config(), {"mlops-platform:trackingAdminPassword": None})
    with pytest.raises(ConfigError) as caught:
        render_config(config, secrets={})
    assert "mlops-platform:trackingAdminPassword: missing; set it with `pulumi config set --secret" in str(caught.value)
    assert caught.value.registered_resources == []  # type: ignore[attr-defined]


def test_secret_stored_in_plain_text_is_rejected() -> None:
    config = with_changes(dev_config(), {"mlops-platform:trackingAdminPassword": PASSWORD})
    with pytest.raises(ConfigError, match="stored in plain text"):
        render_config(config, secrets={})


def test_short_admin_password_is_rejected() -> None:
    with pytest.raises(ConfigError, match="shorter than 12 characters"):
        render_config(dev_config(), secrets={"trackingAdminPassword": "short"})


def test_all_errors_reported_at_once() -> None:
    config = with_changes(dev_config(), {"mlops-platform:tracking.replicas": 0, "mlops-platform:network.cidr": "nope"})
    with pytest.raises(ConfigError) as caught:
        render_config(config)
    message = str(caught.value)
    assert "tracking.replicas: 0 is below 1" in message
    assert "network.cidr: \"nope\"" in message


# --- valid edge cases: at every limit, in every accepted spelling, the stack renders ------------

NAME_LIMITS = {"CronJob": 52, "StatefulSet": 52, "Service": 63, "Namespace": 63, "Job": 63}
VALID_EDGES: list[tuple[str, str, dict[str, Any]]] = [
    ("longest names on AWS with RDS", "dev", {
        "mlops-platform:name": "e" * 30,
        "mlops-platform:cluster.trainingPools[0].name": "p" * 47,
        "mlops-platform:workloads.training[0]": {"name": "t" * 39, "spec": "/app/specs/churn.yaml", "pool": "p" * 47},
        "mlops-platform:workloads.monitoring.retrainJob": "t" * 39,
        "mlops-platform:serving.endpoints[0].name": "s" * 44,
    }),
    ("every accepted spelling", "dev", {
        "mlops-platform:serving.endpoints[0]": {"name": "churn", "model": "churn", "cpu": 2, "memory": "1.5Gi",
                                               "modelVersion": 3, "host": "churn.ml.example.com"},
        "mlops-platform:workloads.training[0].cpu": "10m",
        "mlops-platform:workloads.training[0].memory": "32Mi",
        "mlops-platform:workloads.monitoring.schedule": "0-59/15 0-23 1-31 JAN-DEC sun-sat",
        "mlops-platform:workloads.monitoring.alertWebhook": "http://alertmanager.monitoring.svc:9093/api/v2/alerts",
        "mlops-platform:tracking.database": {"engineVersion": 16, "instanceClass": "db.m7i.2xlarge",
                                             "image": "postgres@sha256:" + "0" * 64},
        "mlops-platform:tags.extra": {"team name": "ML Plattform ü", "example.com/ticket": "OPS-1"},
        "mlops-platform:cluster.trainingPools[1].instanceTypes": ["g6e.xlarge", "p4d.24xlarge", "g5.metal"],
        "mlops-platform:cluster.trainingPools[0].labels": {"example.com/team": "ml", "tier": ""},
        "mlops-platform:cluster.systemPool": {"instanceTypes": ["m7i-flex.large", "m6i.metal"]},
        "mlops-platform:network": {"mode": "existing", "vpcId": "vpc-0123abcd",
                                   "privateSubnetIds": ["subnet-0123456789abcdef0", "subnet-89abcdef"]},
    }),
    ("longest name without RDS (cloud none)", "local", {
        "mlops-platform:name": "l" * 47,
        "mlops-platform:workloads.monitoring.schedule": "@hourly",
        "mlops-platform:storage.minioVolumeSize": "16Ti",
    }),
]


@pytest.mark.parametrize(("case", "stack", "changes"), VALID_EDGES, ids=[c[0] for c in VALID_EDGES])
def test_valid_edge_cases_render(case: str, stack: str, changes: dict[str, Any]) -> None:
    config = with_changes(copy.deepcopy(load_stack_config(stack_file(stack))), changes)
    result = render_config(config)
    assert result.resources
    problems = []
    for m in manifests(result):
        name = m["metadata"].get("name", "")
        if len(name) > NAME_LIMITS.get(m["kind"], 253):
            problems.append(f"{m['kind']} {name} is {len(name)} characters")
        problems += [f"{m['kind']} {name}: label {k}={v}" for k, v in _labels(m) if len(str(v)) > 63]
    assert problems == []
    if case.startswith("longest names"):
        # The derived-name limits are exact: the longest CronJob is exactly at Kubernetes' limit.
        assert max(len(m["metadata"]["name"]) for m in manifests(result, "CronJob")) == 52


def _labels(node: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("labels", "matchLabels") and isinstance(value, dict):
                found += value.items()
            found += _labels(value)
    elif isinstance(node, list):
        for item in node:
            found += _labels(item)
    return found


# --- classes of values: every field of a kind follows the kind's rule ----------------------------


def _base_types(annotation: Any) -> set[Any]:
    if get_origin(annotation) in (Annotated, Union, types.UnionType):
        args = get_args(annotation)[:1] if get_origin(annotation) is Annotated else get_args(annotation)
        return set().union(*(_base_types(a) for a in args))
    return {annotation}


def _leaf_fields(model: type[BaseModel], path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, annotation) of every non-section field; lists of sections are entered at [0]."""
    leaves = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        section = next((t for t in _base_types(info.annotation) | set(get_args(info.annotation))
                        if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if section is not None:
            index = (0,) if get_origin(info.annotation) is list else ()
            leaves += _leaf_fields(section, (*path, key, *index))
        else:
            leaves.append(((*path, key), info.annotation))
    return leaves


def _dev_raw() -> dict[str, Any]:
    return {k.removeprefix("mlops-platform:"): v for k, v in dev_config().items()
            if k.startswith("mlops-platform:") and not (isinstance(v, dict) and "secure" in v)}


def _rejects(path: tuple[Any, ...], value: Any) -> str:
    raw = _dev_raw()
    node = raw
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_environment(raw)
    message = str(caught.value)
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    assert f"mlops-platform:{shown}" in message, message
    return message


LEAVES = _leaf_fields(EnvironmentConfig)
NUMBERS = [p for p, a in LEAVES if _base_types(a) & {int, float} and bool not in _base_types(a)]


def _named(pattern: str) -> list[tuple[Any, ...]]:
    return [p for p, _ in LEAVES if re.search(pattern, str(p[-1]))]


@pytest.mark.parametrize("path", NUMBERS, ids=[".".join(map(str, p)) for p in NUMBERS])
def test_every_number_is_finite_and_bounded(path: tuple[Any, ...]) -> None:
    assert "not a finite number" in _rejects(path, float("inf"))
    assert "1e+30" in _rejects(path, 1e30)


@pytest.mark.parametrize("path", _named(r"(?i)memory|volumesize"), ids=str)
def test_every_memory_field_is_a_byte_quantity(path: tuple[Any, ...]) -> None:
    assert "('m' means milli)" in _rejects(path, "512m")


@pytest.mark.parametrize("path", _named(r"^cpu$"), ids=str)
def test_every_cpu_field_is_a_cpu_quantity(path: tuple[Any, ...]) -> None:
    assert "is not a CPU amount" in _rejects(path, "2Gi")


@pytest.mark.parametrize("path", _named(r"(?i)image$"), ids=str)
def test_every_image_field_is_a_reference(path: tuple[Any, ...]) -> None:
    assert "is not an image" in _rejects(path, "registry.example.com/my image")


@pytest.mark.parametrize("path", _named(r"(?i)host$"), ids=str)
def test_every_host_field_is_a_host_name(path: tuple[Any, ...]) -> None:
    assert "is a URL" in _rejects(path, "https://ml.example.com/")


@pytest.mark.parametrize("path", _named(r"^name$"), ids=str)
def test_every_name_is_a_bounded_dns_label(path: tuple[Any, ...]) -> None:
    assert "is not a DNS label" in _rejects(path, "Name_With_Caps")
    assert "characters; at most" in _rejects(path, "n" * 64)


def test_the_class_tests_cover_the_fields_they_are_about() -> None:
    # A renamed key must not silently empty a class test.
    assert len(NUMBERS) >= 30
    assert len(_named(r"(?i)memory|volumesize")) >= 5 and len(_named(r"^cpu$")) >= 3
    assert len(_named(r"(?i)image$")) >= 4 and len(_named(r"(?i)host$")) >= 2 and len(_named(r"^name$")) >= 4


# --- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["trackingAdminPassword", "databasePassword", "kubeconfig"])
def test_every_secret_in_plain_text_is_rejected(key: str) -> None:
    config = with_changes(dev_config(), {f"mlops-platform:{key}": "a-plain-text-value-of-some-length"})
    secrets = {} if key == "trackingAdminPassword" else {"trackingAdminPassword": PASSWORD}
    with pytest.raises(ConfigError) as caught:
        render_config(config, secrets=secrets)
    assert str(caught.value) == (f"mlops-platform:{key}: is stored in plain text; set it with "
                                 f"`pulumi config set --secret {key} <value>`")
    assert caught.value.registered_resources == []  # type: ignore[attr-defined]


def test_optional_secrets_set_with_secret_are_accepted() -> None:
    secrets = {"trackingAdminPassword": PASSWORD, "databasePassword": "another-long-password"}
    assert render_config(dev_config(), secrets=secrets).resources
