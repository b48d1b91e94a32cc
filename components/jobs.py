"""Training Job templates and monitoring CronJobs: the workloads that run on their own.

Per `workloads.training` entry, a training template `train-<name>`: a CronJob with
`suspend: true` whose jobTemplate runs `mlops train SPEC` on the training pools. A suspended
CronJob is the Kubernetes-native "Job template": it never runs at `pulumi up`, it is not
replaced when the image tag changes (a Job's pod template is immutable, a CronJob's is not),
and every run is `kubectl create job --from=cronjob/train-<name> train-<name>-<suffix>`.
With `searchShards > 1` the template is an Indexed Job (one pod per candidate shard,
`mlops train SPEC --shard $(JOB_COMPLETION_INDEX) --shards N`) and a second template
`train-<name>-select` runs `mlops train SPEC --select --shards N`, which waits for the shards.
Shards and select find each other by the spec hash and data digest (their default search
group), so the two Jobs need no shared name or variable.

Per serving endpoint, a CronJob `monitor-<endpoint>` on `workloads.monitoring.schedule`
runs `mlops monitor` with the thresholds from config (`concurrencyPolicy: Forbid`, history
limits). When `monitoring.retrainJob` names a training job, the monitor may start it: the
Job manifest is mounted as a file and a namespaced Role grants `create` on Jobs, nothing
else. Kubernetes RBAC cannot restrict `create` by object name (the name is not known when
the request is authorized), so the Role admits any Job in this namespace; the namespace's
restricted Pod Security level and quota bound what such a Job could do.

Service accounts (IRSA on AWS): training reads the data bucket and writes the artifact
bucket (plus `datasets/*` in the data bucket, where `mlops train` stores the dataset version
it trained on); monitoring reads the capture and data buckets. The stack contract reaches
every pod through the ConfigMap `workload-contract`; credentials stay Secret references.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.cluster import POOL_LABEL, TRAINING_TAINT_KEY
from components.config import ConfigError, EnvironmentConfig, ServingEndpoint, TrainingJob
from components.irsa import OidcProvider, irsa_role, s3_statements, service_account_annotations
from components.podenv import ContractValues, contract_env, contract_env_from
from components.security import container_security_context, pod_security_context, resources, scratch_volume
from components.tracking import CLIENT_LABEL

CONTRACT_CONFIGMAP = "workload-contract"
TRAINING_ACCOUNT = "training"
MONITORING_ACCOUNT = "monitoring"
RETRAIN_MOUNT = "/etc/mlops/retrain"
# Never fires: the template is suspended; a schedule is still required by the CronJob schema.
TEMPLATE_SCHEDULE = "@yearly"
PART_OF = {"app.kubernetes.io/part-of": "mlops-platform"}


@dataclass(frozen=True)
class JobsArgs:
    env: EnvironmentConfig
    namespace: pulumi.Input[str]
    contract: ContractValues
    data_bucket_arn: pulumi.Input[str]
    artifact_bucket_arn: pulumi.Input[str]
    capture_bucket_arn: pulumi.Input[str]
    oidc: OidcProvider | None = None


def training_template_name(job: TrainingJob) -> str:
    return f"train-{job.name}"


def select_template_name(job: TrainingJob) -> str:
    return f"train-{job.name}-select"


def monitor_name(endpoint: ServingEndpoint) -> str:
    return f"monitor-{endpoint.name}"


def training_gpus(env: EnvironmentConfig, job: TrainingJob) -> int:
    """GPUs to request: the configured count, else one when the job's pool has GPUs."""
    pool = next((p for p in env.cluster.training_pools if p.name == job.pool), None)
    if job.gpus and pool is not None and not pool.gpu:
        raise ConfigError(f"mlops-platform:workloads.training.{job.name}.gpus: {job.gpus} but pool "
                          f"{pool.name!r} has no GPUs")
    return job.gpus or (1 if pool is not None and pool.gpu else 0)


def training_placement(env: EnvironmentConfig, job: TrainingJob) -> dict[str, Any]:
    """nodeSelector and tolerations for the training pools' taint (none on a plain kubeconfig cluster)."""
    if env.cluster.mode == "kubeconfig":
        return {}
    if job.pool:
        selector = {POOL_LABEL: job.pool}
        tolerations = [{"key": TRAINING_TAINT_KEY, "operator": "Equal", "value": job.pool, "effect": "NoSchedule"}]
    else:
        # Any training pool: every pool carries the node-role label and a taint with this key.
        selector = {"mlops-platform/node-role": "training"}
        tolerations = [{"key": TRAINING_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    if training_gpus(env, job):
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    return {"nodeSelector": selector, "tolerations": tolerations}


def training_commands(job: TrainingJob) -> tuple[list[str], list[str] | None]:
    """(shard or single command, selection command or None). Kubernetes expands $(VAR) in args."""
    if job.search_shards == 1:
        return ["mlops", "train", job.spec], None
    shards = str(job.search_shards)
    return (["mlops", "train", job.spec, "--shard", "$(JOB_COMPLETION_INDEX)", "--shards", shards],
            ["mlops", "train", job.spec, "--select", "--shards", shards])


def monitor_args(env: EnvironmentConfig, endpoint: ServingEndpoint) -> list[str]:
    cfg = env.workloads.monitoring
    args = ["--endpoint", endpoint.name, "--model", endpoint.model, "--alias", endpoint.alias,
            "--window-hours", str(cfg.window_hours), "--min-rows", str(cfg.min_rows),
            "--drift-share", str(cfg.drift_share), "--psi-threshold", str(cfg.psi_threshold),
            "--metric-drop", str(cfg.metric_drop), "--cooldown-hours", str(cfg.cooldown_hours), "--json"]
    if cfg.alert_webhook:
        args += ["--alert-webhook", cfg.alert_webhook]
    if cfg.alert_sns_topic_arn:
        args += ["--alert-sns-topic-arn", cfg.alert_sns_topic_arn]
    return args


class Jobs(pulumi.ComponentResource):
    training: dict[str, str]  # training job -> CronJob template name
    monitoring: dict[str, str]  # endpoint -> monitoring CronJob name

    def __init__(self, name: str, args: JobsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:jobs:Jobs", name, None, opts)
        env = args.env
        self.training = {}
        self.monitoring = {}
        if not env.workloads.training and not env.serving.endpoints:
            self.register_outputs({})
            return
        self._args = args
        self._contract_configmap(name)
        templates: dict[str, list[dict[str, Any]]] = {}
        if env.workloads.training:
            account = self._training_account(name)
            for job in env.workloads.training:
                templates[job.name] = self._training(name, job, account)
                self.training[job.name] = training_template_name(job)
        if env.serving.endpoints:
            retrain = env.workloads.monitoring.retrain_job
            if retrain and retrain not in templates:
                raise ConfigError(f"mlops-platform:workloads.monitoring.retrainJob: {retrain!r} is not a training "
                                  f"job; known: {sorted(templates)}")
            account = self._monitoring_account(name, retrain_templates=templates.get(retrain or "", []))
            for endpoint in env.serving.endpoints:
                self._monitor(name, endpoint, account, retrain=bool(retrain))
                self.monitoring[endpoint.name] = monitor_name(endpoint)
        self.register_outputs({"training": self.training, "monitoring": self.monitoring})

    # --- shared ---------------------------------------------------------------------------

    def _contract_configmap(self, name: str) -> None:
        """Plain contract values in a ConfigMap; the tracking password stays a secretKeyRef."""
        c = self._args.contract
        data = {e["name"]: e["value"] for e in contract_env(c) if "value" in e}
        k8s.core.v1.ConfigMap(
            f"{name}-contract",
            metadata={"name": CONTRACT_CONFIGMAP, "namespace": self._args.namespace, "labels": PART_OF},
            data=data,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _env_from(self) -> list[dict[str, Any]]:
        return [{"configMapRef": {"name": CONTRACT_CONFIGMAP}}, *contract_env_from(self._args.contract)]

    def _secret_env(self) -> list[dict[str, Any]]:
        return [e for e in contract_env(self._args.contract) if "valueFrom" in e]

    def _account(self, name: str, account: str, policy: pulumi.Input[str] | None) -> k8s.core.v1.ServiceAccount:
        env = self._args.env
        role = irsa_role(f"{name}-{account}-irsa", env, self._args.oidc, env.namespace, account, policy, parent=self) \
            if policy is not None else None
        return k8s.core.v1.ServiceAccount(
            f"{name}-{account}-sa",
            metadata={"name": account, "namespace": self._args.namespace, "labels": PART_OF,
                      "annotations": service_account_annotations(role)},
            automount_service_account_token=False,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _pod(self, account: str, container: dict[str, Any], placement: dict[str, Any] | None = None,
             volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "serviceAccountName": account,
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "securityContext": pod_security_context(),
            **(placement or {}),
            "containers": [{
                "image": f"{self._args.env.workloads.image}:{self._args.env.workloads.image_tag}",
                "imagePullPolicy": "IfNotPresent",
                "securityContext": container_security_context(),
                "envFrom": self._env_from(),
                **container,
                "env": [*self._secret_env(), *container.get("env", []), {"name": "HOME", "value": "/tmp"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *container.get("volumeMounts", [])],
            }],
            "volumes": [scratch_volume("tmp", "8Gi"), *(volumes or [])],
        }

    # --- training -------------------------------------------------------------------------

    def _training_account(self, name: str) -> k8s.core.v1.ServiceAccount:
        a = self._args
        policy = None
        if a.oidc is not None:
            policy = pulumi.Output.all(a.data_bucket_arn, a.artifact_bucket_arn, a.contract.kms_key_arn,
                                       a.capture_bucket_arn).apply(
                lambda v: json.dumps({"Version": "2012-10-17", "Statement": [
                    *s3_statements(read=[v[0]], write=[v[1]], kms_key_arn=v[2]),
                    # `mlops train` stores the exact dataset it trained on under datasets/<name>/<digest>/.
                    {"Sid": "WriteDatasetVersions", "Effect": "Allow", "Action": ["s3:PutObject"],
                     "Resource": [f"{v[0]}/datasets/*"]},
                    # A retraining Job reads the newest data the monitor left under monitoring/.
                    {"Sid": "ReadRetrainingData", "Effect": "Allow", "Action": ["s3:GetObject"],
                     "Resource": [f"{v[3]}/monitoring/*"]},
                ]}))
        return self._account(name, TRAINING_ACCOUNT, policy)

    def _training_job_spec(self, job: TrainingJob, command: list[str], *, indexed: bool) -> dict[str, Any]:
        env = self._args.env
        labels = {**PART_OF, **CLIENT_LABEL, "app.kubernetes.io/component": "training",
                  "mlops-platform/training-job": job.name}
        container: dict[str, Any] = {
            "name": "train",
            "command": command[:2],
            "args": command[2:],
            "resources": resources(job.cpu, job.memory, gpus=training_gpus(env, job)),
        }
        spec: dict[str, Any] = {
            "backoffLimit": job.backoff_limit,
            "activeDeadlineSeconds": job.active_deadline_seconds,
            "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
            "template": {
                "metadata": {"labels": labels},
                "spec": self._pod(TRAINING_ACCOUNT, container, training_placement(env, job)),
            },
        }
        if indexed:
            spec.update({"completionMode": "Indexed", "completions": job.search_shards,
                         "parallelism": job.search_shards})
        return spec

    def _training(self, name: str, job: TrainingJob, account: k8s.core.v1.ServiceAccount) -> list[dict[str, Any]]:
        """Register the template(s); return their Job specs (what the monitor may create)."""
        command, select = training_commands(job)
        specs = [(training_template_name(job), self._training_job_spec(job, command, indexed=select is not None))]
        if select is not None:
            # Selection reads the shards' runs from MLflow: no search, so one pod of the same size.
            select_job = job.model_copy(update={"search_shards": 1})
            specs.append((select_template_name(job), self._training_job_spec(select_job, select, indexed=False)))
        for template, spec in specs:
            k8s.batch.v1.CronJob(
                f"{name}-{template}",
                metadata={"name": template, "namespace": self._args.namespace,
                          "labels": {**PART_OF, "app.kubernetes.io/component": "training"},
                          "annotations": {"mlops-platform/run": f"kubectl create job --from=cronjob/{template} "
                                                               f"{template}-$(date +%s)"}},
                spec={
                    "schedule": TEMPLATE_SCHEDULE,
                    "suspend": True,
                    "concurrencyPolicy": "Forbid",
                    "successfulJobsHistoryLimit": 3,
                    "failedJobsHistoryLimit": 3,
                    "jobTemplate": {"metadata": {"labels": {**PART_OF, "mlops-platform/training-job": job.name}},
                                    "spec": spec},
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
            )
        return [{"apiVersion": "batch/v1", "kind": "Job",
                 "metadata": {"generateName": f"{template}-retrain-",
                              "labels": {**PART_OF, "mlops-platform/training-job": job.name,
                                         "mlops-platform/started-by": "monitor"}},
                 "spec": spec} for template, spec in specs]

    # --- monitoring -----------------------------------------------------------------------

    def _monitoring_account(self, name: str, retrain_templates: list[dict[str, Any]]) -> k8s.core.v1.ServiceAccount:
        a = self._args
        policy = None
        if a.oidc is not None:
            policy = pulumi.Output.all(a.capture_bucket_arn, a.data_bucket_arn, a.contract.kms_key_arn).apply(
                lambda v: json.dumps({"Version": "2012-10-17", "Statement": [
                    *s3_statements(read=[v[0], v[1]], kms_key_arn=v[2]),
                    # The retraining lock, the cooldown record and the retraining data live under monitoring/.
                    *[{**s, "Sid": f"Monitoring{s['Sid']}"} for s in s3_statements(
                        write=[v[0]], prefix="monitoring/*", delete=True, kms_key_arn=v[2])],
                ]}))
        account = self._account(name, MONITORING_ACCOUNT, policy)
        if not retrain_templates:
            return account
        child = pulumi.ResourceOptions(parent=self)
        # The Jobs the monitor may start, as files: it needs no read access to anything in the cluster.
        k8s.core.v1.ConfigMap(
            f"{name}-retrain",
            metadata={"name": "retrain-jobs", "namespace": a.namespace, "labels": PART_OF},
            data=pulumi.Output.from_input(retrain_templates).apply(
                lambda specs: {f"{i}-{s['metadata']['generateName'].rstrip('-')}.json": json.dumps(s)
                               for i, s in enumerate(specs)}),
            opts=child,
        )
        role = k8s.rbac.v1.Role(
            f"{name}-retrain-role",
            metadata={"name": "monitoring-retrain", "namespace": a.namespace, "labels": PART_OF},
            # `create` cannot be limited by resourceNames in RBAC: any Job in this namespace (see module doc).
            rules=[{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}],
            opts=child,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-retrain-binding",
            metadata={"name": "monitoring-retrain", "namespace": a.namespace, "labels": PART_OF},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata["name"]},
            subjects=[{"kind": "ServiceAccount", "name": account.metadata["name"], "namespace": a.namespace}],
            opts=child,
        )
        return account

    def _monitor(self, name: str, endpoint: ServingEndpoint, account: k8s.core.v1.ServiceAccount,
                 retrain: bool) -> None:
        a = self._args
        labels = {**PART_OF, **CLIENT_LABEL, "app.kubernetes.io/component": "monitoring",
                  "mlops-platform/endpoint": endpoint.name}
        container: dict[str, Any] = {
            "name": "monitor",
            "command": ["mlops", "monitor"],
            "args": monitor_args(a.env, endpoint),
            "resources": resources("250m", "1Gi"),
        }
        volumes: list[dict[str, Any]] = []
        if retrain:
            # Only this pod gets an API token (short-lived, projected); every other pod has none.
            container["env"] = [{"name": "MLOPS_RETRAIN_JOBS_DIR", "value": RETRAIN_MOUNT}]
            container["volumeMounts"] = [{"name": "retrain-jobs", "mountPath": RETRAIN_MOUNT, "readOnly": True},
                                         {"name": "api-token", "mountPath": "/var/run/secrets/kubernetes.io/"
                                          "serviceaccount", "readOnly": True}]
            volumes = [{"name": "retrain-jobs", "configMap": {"name": "retrain-jobs"}},
                       {"name": "api-token", "projected": {"sources": [
                           {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                           {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                           {"downwardAPI": {"items": [{"path": "namespace",
                                                       "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]
        placement = {"nodeSelector": {POOL_LABEL: "system"}} if a.env.cluster.mode in ("create", "existing") else {}
        k8s.batch.v1.CronJob(
            f"{name}-{monitor_name(endpoint)}",
            metadata={"name": monitor_name(endpoint), "namespace": a.namespace, "labels": labels},
            spec={
                "schedule": a.env.workloads.monitoring.schedule,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 300,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {"metadata": {"labels": labels}, "spec": {
                    "backoffLimit": 1,
                    "activeDeadlineSeconds": 3600,
                    "ttlSecondsAfterFinished": 24 * 3600,
                    "template": {"metadata": {"labels": labels},
                                 "spec": self._pod(MONITORING_ACCOUNT, container, placement, volumes)},
                }},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )
