"""Model serving endpoints: one Deployment per `serving.endpoints` entry, running `mlops serve`.

Each endpoint serves `models:/<model>@<alias>` with MLflow's scoring protocol on port 8080
(`/ping` readiness, `/health` liveness), behind a ClusterIP Service, with an HPA on CPU, a
PDB, an optional TLS Ingress, and inference capture to the capture bucket. The container's
arguments are the endpoint's `ServeSettings` rendered by the settings contract
(workloads/settings.py): listening on every interface, on the port the Service targets.
Changing `modelVersion` in config changes a pod-template annotation, so the Deployment rolls
and the new pods resolve the alias again. Endpoints run on the system pool, never on training
nodes. On AWS the pods get an IRSA role that can write `captures/*` of the capture bucket,
nothing else: models are loaded through the tracking server (components/workload_iam.py).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import EnvironmentConfig, ServingEndpoint
from components.irsa import irsa_role, service_account_annotations
from components.podenv import inline_contract
from components.pods import Container, PodBuilder, WorkloadArgs, WorkloadPod, pod_builder, system_placement
from components.security import resources
from components.tracking import CLIENT_LABEL, ingress
from components.workload_iam import serving_policy
from workloads.settings import POD_HOST, ServeSettings, to_args

PORT = 8080
SERVICE_PORT = 80
MODEL_VERSION_ANNOTATION = "mlops-platform/model-version"
ACCOUNT = "serving"
PART_OF = {"app.kubernetes.io/part-of": "mlops-platform"}


ServingArgs = WorkloadArgs  # models are loaded through the tracking server: no artifact grant


def endpoint_url(env: EnvironmentConfig, endpoint: ServingEndpoint) -> str:
    if endpoint.host:
        return f"https://{endpoint.host}"
    return f"http://{service_name(endpoint)}.{env.namespace}.svc.cluster.local:{SERVICE_PORT}"


def service_name(endpoint: ServingEndpoint) -> str:
    return f"serve-{endpoint.name}"


def serve_settings(endpoint: ServingEndpoint) -> ServeSettings:
    """What `mlops serve` runs with in the pod: the endpoint's config, on all interfaces at PORT."""
    return ServeSettings(model=endpoint.model, alias=endpoint.alias, host=POD_HOST, port=PORT,
                         workers=endpoint.workers, max_batch_rows=endpoint.max_batch_rows,
                         max_wait_ms=endpoint.max_wait_ms, capture=endpoint.capture, endpoint_name=endpoint.name)


def serve_container(endpoint: ServingEndpoint) -> Container:
    settings = serve_settings(endpoint)
    http = {"path": "/ping", "port": "http"}
    return Container(
        name="serve", command=["mlops", "serve"], args=to_args(settings),
        resources=resources(endpoint.cpu, endpoint.memory),
        extra={
            # The Service's targetPort and the probes name this port: the one `mlops serve` listens on.
            "ports": [{"name": "http", "containerPort": settings.port}],
            "readinessProbe": {"httpGet": http, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {**http, "path": "/health"}, "initialDelaySeconds": 30,
                              "periodSeconds": 15, "failureThreshold": 4},
            "startupProbe": {"httpGet": http, "periodSeconds": 5, "failureThreshold": 120},
        },
    )


class Serving(pulumi.ComponentResource):
    endpoints: dict[str, str]  # name -> URL

    def __init__(self, name: str, args: ServingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:serving:Serving", name, None, opts)
        env = args.env
        self.endpoints = {}
        if env.serving.endpoints:
            account = self._account(name, args)
            # Inline contract values: a changed value changes the pod template, so the Deployment rolls.
            pods = pod_builder(env, inline_contract(args.contract))
            for endpoint in env.serving.endpoints:
                self._endpoint(name, args, endpoint, pods, account)
                self.endpoints[endpoint.name] = endpoint_url(env, endpoint)
        self.register_outputs({"endpoints": self.endpoints})

    def _account(self, name: str, args: ServingArgs) -> k8s.core.v1.ServiceAccount:
        role = None
        if args.oidc is not None:
            policy = pulumi.Output.all(args.capture_bucket_arn, args.contract.kms_key_arn).apply(
                lambda v: serving_policy(v[0], v[1]))
            role = irsa_role(f"{name}-irsa", args.env, args.oidc, args.env.namespace, ACCOUNT, policy, parent=self)
        return k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={"name": ACCOUNT, "namespace": args.namespace, "labels": PART_OF,
                      "annotations": service_account_annotations(role)},
            automount_service_account_token=False,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _endpoint(self, name: str, args: ServingArgs, endpoint: ServingEndpoint, pods: PodBuilder,
                  account: k8s.core.v1.ServiceAccount) -> None:
        child = pulumi.ResourceOptions(parent=self)
        rname, svc = f"{name}-{endpoint.name}", service_name(endpoint)
        labels = {"app.kubernetes.io/name": svc, "app.kubernetes.io/component": "serving", **PART_OF,
                  "mlops-platform/endpoint": endpoint.name}
        meta = {"name": svc, "namespace": args.namespace, "labels": labels}
        spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                   "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": labels}}]
        pod = WorkloadPod(account=account.metadata["name"], container=serve_container(endpoint), scratch_size="2Gi",
                          placement={**system_placement(args.env), "topologySpreadConstraints": spread})
        min_replicas = max(endpoint.replicas.min, 1)
        k8s.apps.v1.Deployment(
            rname,
            metadata=meta,
            spec={
                "replicas": min_replicas,
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": {**labels, **CLIENT_LABEL},
                        # A new configured version changes the template: the Deployment rolls.
                        "annotations": {MODEL_VERSION_ANNOTATION: endpoint.model_version or endpoint.alias},
                    },
                    "spec": pods.spec(pod),
                },
            },
            # The HPA owns replicas after creation.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["spec.replicas"]),
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(f"{rname}-hpa", metadata=meta, spec={
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc},
            "minReplicas": min_replicas,
            "maxReplicas": max(endpoint.replicas.max, min_replicas),
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        }, opts=child)
        # One replica: allow eviction (maxUnavailable 1) so node drains never hang.
        k8s.policy.v1.PodDisruptionBudget(f"{rname}-pdb", metadata=meta,
                                          spec={"maxUnavailable": 1, "selector": {"matchLabels": labels}}, opts=child)
        k8s.core.v1.Service(f"{rname}-svc", metadata=meta, spec=_service_spec(labels), opts=child)
        if endpoint.host:
            ingress(self, f"{rname}-ingress", svc, args.namespace, endpoint.host, None, svc, SERVICE_PORT, labels)


def _service_spec(labels: dict[str, str]) -> dict[str, Any]:
    return {"type": "ClusterIP", "selector": labels,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]}
