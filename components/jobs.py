"""Training Job templates and monitoring CronJobs: the workloads that run on their own.

Per `workloads.training` entry, a training template `train-<name>`: a CronJob with
`suspend: true` whose jobTemplate runs `mlops train SPEC` on the training pools. A suspended
CronJob is the Kubernetes-native "Job template": it never runs at `pulumi up`, it is not
replaced when the image tag changes (a Job's pod template is immutable, a CronJob's is not),
and every run is `kubectl create job --from=cronjob/train-<name> train-<name>-<suffix>`.
With `searchShards > 1` the template is an Indexed Job (one pod per candidate shard,
`mlops train SPEC --shard $(JOB_COMPLETION_INDEX) --shards N`) and a second template
`train-<name>-select` runs `mlops train SPEC --shards N --select`, which waits for the shards.
Shards and select find each other by the spec hash and data digest (their default search
group), so the two Jobs need no shared name or variable.

Per serving endpoint, a CronJob `monitor-<endpoint>` on `workloads.monitoring.schedule`
runs `mlops monitor` with the thresholds from config and the endpoint's labels source
(`concurrencyPolicy: Forbid`, history limits). When `monitoring.retrainJob` names a training
job, the monitor may start it: the Job manifest is mounted as a file and a namespaced Role
grants `create` on Jobs, nothing else. Kubernetes RBAC cannot restrict `create` by object name
(the name is not known when the request is authorized), so a ValidatingAdmissionPolicy admits
only Jobs matching the training template (components/retrain_admission.py; its parameters are
the ConfigMap `retrain-admission` written here).

Each pod carries its own credentials (components/credentials.py): training job J the MLflow user
`mlops-training-J`, the monitor of endpoint E `mlops-monitoring-E`, and with MinIO the S3 user of
its service account.

Every container's arguments are its settings model rendered by the settings contract
(workloads/settings.py `to_args`), so they parse as the CLI parses them. The stack contract
reaches every pod through the ConfigMap `workload-contract`; credentials stay Secret
references. IRSA policies: components/workload_iam.py.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import credentials, retrain_admission
from components.cluster import POOL_LABEL, TRAINING_TAINT_KEY
from components.config import Cloud, ConfigError, EnvironmentConfig, ServingEndpoint, TrainingJob
from components.irsa import irsa_role, service_account_annotations
from components.observability import pushgateway_url
from components.podenv import configmap_contract, contract_configmap_data
from components.pods import Container, PodBuilder, WorkloadArgs, WorkloadPod, pod_builder, system_placement
from components.security import resources
from components.tracking import CLIENT_LABEL
from components.workload_iam import labeler_policy, monitoring_policy, training_policy
from workloads import layout
from workloads.monitoring.export import PUSHGATEWAY_ENV
from workloads.settings import MonitorSettings, TrainSettings, to_args

CONTRACT_CONFIGMAP = "workload-contract"
TRAINING_ACCOUNT = "training"
MONITORING_ACCOUNT = retrain_admission.MONITORING_ACCOUNT  # what the admission policy matches
LABELER_ACCOUNT = "labeler"  # the only writer of labels/<endpoint>/ (workload_iam.labeler_policy)
RETRAIN_MOUNT = "/etc/mlops/retrain"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# Never fires: the template is suspended; a schedule is still required by the CronJob schema.
TEMPLATE_SCHEDULE = "@yearly"
PART_OF = {"app.kubernetes.io/part-of": "mlops-platform"}
# Kubernetes expands $(VAR) in args: each pod of an Indexed Job searches its own shard.
SHARD_INDEX = {"shard": "$(JOB_COMPLETION_INDEX)"}


JobsArgs = WorkloadArgs  # needs data_bucket_arn; training's artifacts go through the tracking server


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


def training_steps(job: TrainingJob) -> list[tuple[str, list[str], bool]]:
    """(template name, `mlops train` args, indexed) per template: one run, or N shards then select."""
    if job.search_shards == 1:
        return [(training_template_name(job), to_args(TrainSettings(spec=job.spec)), False)]
    shard = TrainSettings(spec=job.spec, shard=0, shards=job.search_shards)  # shard 0 stands for the index
    select = TrainSettings(spec=job.spec, shards=job.search_shards, select=True)
    return [(training_template_name(job), to_args(shard, substitute=SHARD_INDEX), True),
            (select_template_name(job), to_args(select), False)]


def labels_source(endpoint: ServingEndpoint, capture_bucket: str) -> str | None:
    """Where this endpoint's monitor reads ground truth (`serving.endpoints[].monitorLabels`)."""
    if endpoint.monitor_labels is True:
        return f"s3://{capture_bucket}/{layout.labels_prefix(endpoint.name)}"
    return endpoint.monitor_labels or None


def monitor_settings(env: EnvironmentConfig, endpoint: ServingEndpoint, capture_bucket: str) -> MonitorSettings:
    cfg = env.workloads.monitoring
    return MonitorSettings(
        endpoint=endpoint.name, model=endpoint.model, alias=endpoint.alias, window_hours=cfg.window_hours,
        labels=labels_source(endpoint, capture_bucket),
        # Without a retraining Job the pod must not train itself (no data-bucket write, sized to monitor).
        retrain=cfg.retrain_job is not None,
        min_rows=cfg.min_rows, drift_share=cfg.drift_share, psi_threshold=cfg.psi_threshold,
        metric_drop=cfg.metric_drop, cooldown_hours=cfg.cooldown_hours,
        alert_webhook=cfg.alert_webhook, alert_sns_topic_arn=cfg.alert_sns_topic_arn,
        # The monitor compares champion and challenger only for an endpoint with a rollout.
        **({"rollout": endpoint.rollout.mode} if endpoint.rollout.mode != "none" else {}),
    )


class Jobs(pulumi.ComponentResource):
    training: dict[str, str]  # training job -> CronJob template name
    monitoring: dict[str, str]  # endpoint -> monitoring CronJob name

    def __init__(self, name: str, args: JobsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:jobs:Jobs", name, None, opts)
        env = args.env
        self.training = {}
        self.monitoring = {}
        if env.cluster.mode != "existing":  # cluster-scoped: the stack owning the cluster registers it
            retrain_admission.register_policy(self, name, env.name)
        if not env.workloads.training and not env.serving.endpoints:
            self.register_outputs({})
            return
        if args.data_bucket_arn is None:
            raise ValueError("Jobs needs data_bucket_arn: training reads the data bucket")
        self._args = args
        self._pods = pod_builder(env, configmap_contract(args.contract, CONTRACT_CONFIGMAP))
        k8s.core.v1.ConfigMap(
            f"{name}-contract",
            metadata={"name": CONTRACT_CONFIGMAP, "namespace": args.namespace, "labels": PART_OF},
            data=contract_configmap_data(args.contract),
            opts=pulumi.ResourceOptions(parent=self),
        )
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
            account = self._monitoring_account(name)
            self._labeler_account(name)
            if retrain:
                self._retrain_access(name, account, templates[retrain])
                self._retrain_admission(name, retrain, templates[retrain])
            for endpoint in env.serving.endpoints:
                self._monitor(name, endpoint, account, retrain=bool(retrain))
                self.monitoring[endpoint.name] = monitor_name(endpoint)
        self.register_outputs({"training": self.training, "monitoring": self.monitoring})

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

    # --- training -------------------------------------------------------------------------

    def _training_account(self, name: str) -> k8s.core.v1.ServiceAccount:
        a = self._args
        policy = None
        if a.oidc is not None:
            policy = pulumi.Output.all(a.data_bucket_arn, a.capture_bucket_arn, a.contract.kms_key_arn).apply(
                lambda v: training_policy(v[0], v[1], v[2]))
        return self._account(name, TRAINING_ACCOUNT, policy)

    def _training(self, name: str, job: TrainingJob, account: k8s.core.v1.ServiceAccount) -> list[dict[str, Any]]:
        """Register the template(s); return their Job manifests (what the monitor may create)."""
        specs = []
        for template, arguments, indexed in training_steps(job):
            # Selection reads the shards' runs from MLflow: no search, so one pod of the same size.
            spec = training_job_spec(self._pods, self._args.env, job, arguments, indexed=indexed)
            specs.append((template, spec))
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

    def _monitoring_account(self, name: str) -> k8s.core.v1.ServiceAccount:
        a = self._args
        policy = None
        if a.oidc is not None:
            endpoints = a.env.serving.endpoints
            topic = a.env.workloads.monitoring.alert_sns_topic_arn
            policy = pulumi.Output.all(a.capture_bucket_arn, a.data_bucket_arn, a.contract.kms_key_arn,
                                       a.contract.capture_bucket).apply(
                lambda v: monitoring_policy(v[0], v[1], v[2], [s for e in endpoints if (s := labels_source(e, v[3]))],
                                            topic))
        return self._account(name, MONITORING_ACCOUNT, policy)

    def _labeler_account(self, name: str) -> None:
        """The labeling process's identity on AWS: service account `labeler`, whose IRSA role may only write the
        endpoints' labels sources (with MinIO: the user `mlops-labeler`, components/minio_users.py)."""
        a, endpoints = self._args, self._args.env.serving.endpoints
        if a.oidc is not None and any(e.monitor_labels for e in endpoints):
            self._account(name, LABELER_ACCOUNT, pulumi.Output.all(a.contract.kms_key_arn, a.contract.capture_bucket).apply(
                lambda v: labeler_policy([s for e in endpoints if (s := labels_source(e, v[1]))], v[0])))

    def _retrain_access(self, name: str, account: k8s.core.v1.ServiceAccount, templates: list[dict[str, Any]]) -> None:
        """The Jobs the monitor may start, as files (it needs no read access to the cluster), and `create` on Jobs."""
        a, child = self._args, pulumi.ResourceOptions(parent=self)
        k8s.core.v1.ConfigMap(
            f"{name}-retrain",
            metadata={"name": "retrain-jobs", "namespace": a.namespace, "labels": PART_OF},
            data=pulumi.Output.from_input(templates).apply(
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

    def _retrain_admission(self, name: str, job: str, templates: list[dict[str, Any]]) -> None:
        """This namespace's parameters of the retraining admission policy: what the templates render."""
        a = self._args
        own = credentials.training(job)
        secrets = [own.tracking_secret, *([own.s3_secret] if a.env.cloud == Cloud.none else [])]
        args = [t["spec"]["template"]["spec"]["containers"][0]["args"] for t in templates]
        k8s.core.v1.ConfigMap(
            f"{name}-retrain-admission",
            metadata={"name": retrain_admission.PARAMS, "namespace": a.namespace, "labels": PART_OF},
            data=pulumi.Output.from_input(a.contract.capture_bucket).apply(lambda bucket: retrain_admission.parameters(
                a.env.workload_image, TRAINING_ACCOUNT, secrets, args, bucket,
                [e.name for e in a.env.serving.endpoints])),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _monitor(self, name: str, endpoint: ServingEndpoint, account: k8s.core.v1.ServiceAccount,
                 retrain: bool) -> None:
        a = self._args
        labels = {**PART_OF, **CLIENT_LABEL, "app.kubernetes.io/component": "monitoring",
                  "mlops-platform/endpoint": endpoint.name}
        arguments = pulumi.Output.from_input(a.contract.capture_bucket).apply(
            lambda bucket: [*to_args(monitor_settings(a.env, endpoint, bucket)), "--json"])
        container = monitor_container(arguments, retrain=retrain, pushgateway=pushgateway_url(a.env))
        pod = WorkloadPod(account=MONITORING_ACCOUNT, container=container,
                          scratch_size="8Gi", credentials=credentials.monitoring(endpoint.name), placement=system_placement(a.env), restart_policy="Never",
                          volumes=retrain_volumes() if retrain else ())
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
                    "template": {"metadata": {"labels": labels}, "spec": self._pods.spec(pod)},
                }},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account]),
        )


def training_job_spec(pods: PodBuilder, env: EnvironmentConfig, job: TrainingJob, arguments: list[str], *,
                      indexed: bool) -> dict[str, Any]:
    labels = {**PART_OF, **CLIENT_LABEL, "app.kubernetes.io/component": "training",
              "mlops-platform/training-job": job.name}
    container = Container(name="train", command=["mlops", "train"], args=arguments,
                          resources=resources(job.cpu, job.memory, gpus=training_gpus(env, job)))
    pod = WorkloadPod(account=TRAINING_ACCOUNT, container=container, scratch_size="8Gi",
                      credentials=credentials.training(job.name),
                      placement=training_placement(env, job), restart_policy="Never")
    spec: dict[str, Any] = {
        "backoffLimit": job.backoff_limit,
        "activeDeadlineSeconds": job.active_deadline_seconds,
        "ttlSecondsAfterFinished": job.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": labels}, "spec": pods.spec(pod)},
    }
    if indexed:
        spec.update({"completionMode": "Indexed", "completions": job.search_shards,
                     "parallelism": job.search_shards})
    return spec


def monitor_container(arguments: pulumi.Input[list[str]], *, retrain: bool, pushgateway: str | None) -> Container:
    # A run is a short-lived pod nothing scrapes: it pushes its figures (workloads/monitoring/export.py).
    env = [{"name": PUSHGATEWAY_ENV, "value": pushgateway}] if pushgateway else []
    if not retrain:
        return Container(name="monitor", command=["mlops", "monitor"], args=arguments,
                         resources=resources("250m", "1Gi"), env=env)
    # Only this pod gets an API token (short-lived, projected); every other pod has none.
    return Container(
        name="monitor", command=["mlops", "monitor"], args=arguments, resources=resources("250m", "1Gi"),
        env=[*env, {"name": "MLOPS_RETRAIN_JOBS_DIR", "value": RETRAIN_MOUNT}],
        mounts=[{"name": "retrain-jobs", "mountPath": RETRAIN_MOUNT, "readOnly": True},
                {"name": "api-token", "mountPath": TOKEN_MOUNT, "readOnly": True}],
    )


def retrain_volumes() -> list[dict[str, Any]]:
    return [{"name": "retrain-jobs", "configMap": {"name": "retrain-jobs"}},
            {"name": "api-token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]
