"""Model serving endpoints: one Deployment per `serving.endpoints` entry, running `mlops serve`.

Each endpoint serves `models:/<model>@<alias>` with MLflow's scoring protocol on port 8080
(`/ping` readiness, `/health` liveness), behind a ClusterIP Service, with an HPA on CPU, a
PDB, inference capture to the capture bucket and, with a `host`, a TLS Ingress that publishes
only /invocations and /ping, rate-limited, to clients holding the endpoint's API key (see
PUBLIC_PATHS). Each endpoint's Secret holds its reload token (POST /reload) and API key,
passed to the app as environment variables (workloads/serving/auth.py). The container's
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
import pulumi_random as random

from components import credentials
from components.config import EnvironmentConfig, ServingEndpoint
from components.irsa import irsa_role, service_account_annotations
from components.observability import serving_pod_annotations
from components.podenv import inline_contract
from components.pods import Container, PodBuilder, WorkloadArgs, WorkloadPod, pod_builder, system_placement
from components.security import resources
from components.tracking import CLIENT_LABEL
from components.workload_iam import serving_policy
from workloads.serving.auth import API_KEYS_ENV, RELOAD_TOKEN_ENV
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
                         max_wait_ms=endpoint.max_wait_ms, capture=endpoint.capture, endpoint_name=endpoint.name,
                         max_request_rows=endpoint.max_request_rows, max_body_bytes=endpoint.max_body_bytes,
                         max_decoded_bytes=endpoint.max_decoded_bytes,
                         max_concurrent_requests=endpoint.max_concurrent_requests,
                         pickle_allowed=endpoint.pickle_allowed, **rollout_settings(endpoint))


def rollout_settings(endpoint: ServingEndpoint) -> dict[str, Any]:
    """`--rollout` (and, for a canary, `--canary-weight`) only when the endpoint has a rollout: an endpoint
    without one renders exactly as before."""
    mode = endpoint.rollout.mode
    if mode == "none":
        return {}
    return {"rollout": mode, **({"canary_weight": endpoint.rollout.weight} if mode == "canary" else {})}


def auth_secret_name(endpoint: ServingEndpoint) -> str:
    return f"{service_name(endpoint)}-auth"


def credential_env(endpoint: ServingEndpoint) -> list[dict[str, Any]]:
    """The endpoint's credentials as the app reads them (workloads/serving/auth.py): the reload token
    always; API keys when the endpoint is published through an Ingress."""
    keys = [(RELOAD_TOKEN_ENV, "reload-token")] + ([(API_KEYS_ENV, "api-keys")] if endpoint.host else [])
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": auth_secret_name(endpoint), "key": key}}}
            for env, key in keys]


def serve_container(endpoint: ServingEndpoint) -> Container:
    settings = serve_settings(endpoint)
    http = {"path": "/ping", "port": "http"}
    return Container(
        name="serve", command=["mlops", "serve"], args=to_args(settings),
        resources=resources(endpoint.cpu, endpoint.memory), env=credential_env(endpoint),
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
                          credentials=credentials.serving(endpoint.name),  # its own MLflow user: reads its model
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
                        "annotations": {MODEL_VERSION_ANNOTATION: endpoint.model_version or endpoint.alias,
                                        **serving_pod_annotations(args.env, PORT)},
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
        self._credentials(rname, endpoint, meta)
        if endpoint.host:
            k8s.networking.v1.Ingress(f"{rname}-ingress", metadata={**meta, "annotations": ingress_annotations(endpoint)},
                                      spec=ingress_spec(endpoint), opts=child)

    def _credentials(self, rname: str, endpoint: ServingEndpoint, meta: dict[str, Any]) -> None:
        """The endpoint's Secret: a reload token, and an API key when it has a public host (rotate by
        replacing the random resource; clients read the key from this Secret)."""
        child = pulumi.ResourceOptions(parent=self)
        data = {"reload-token": random.RandomPassword(f"{rname}-reload-token", length=40, special=False,
                                                      opts=child).result}
        if endpoint.host:
            data["api-keys"] = random.RandomPassword(f"{rname}-api-key", length=40, special=False, opts=child).result
        k8s.core.v1.Secret(f"{rname}-auth", metadata={**meta, "name": auth_secret_name(endpoint)}, string_data=data,
                           opts=child)


def _service_spec(labels: dict[str, str]) -> dict[str, Any]:
    return {"type": "ClusterIP", "selector": labels,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]}


# Published through ingress-nginx: scoring and readiness only (/reload, /metrics, /version stay
# inside the cluster). Clients authenticate with an API key the app checks (Authorization: Bearer,
# keys from the endpoint's Secret): the check travels with the endpoint, so it holds behind any
# ingress controller or port-forward and for in-cluster callers of a public endpoint, and the
# stack needs no htpasswd hashing (bcrypt salts would change every render). nginx adds what it
# does best at the edge: a per-client rate limit, a connection cap, buffered bodies (slow clients
# never reach the pod) within the body size the app accepts.
PUBLIC_PATHS = ("/invocations", "/ping")


def ingress_annotations(endpoint: ServingEndpoint) -> dict[str, str]:
    nginx = "nginx.ingress.kubernetes.io"
    return {f"{nginx}/ssl-redirect": "true",
            f"{nginx}/limit-rps": str(endpoint.rate_limit_rps),
            f"{nginx}/limit-burst-multiplier": "5",
            f"{nginx}/limit-connections": str(max(endpoint.rate_limit_rps // 2, 2)),
            f"{nginx}/proxy-body-size": str(endpoint.max_body_bytes),
            f"{nginx}/proxy-request-buffering": "on",
            f"{nginx}/proxy-read-timeout": "60"}


def ingress_spec(endpoint: ServingEndpoint) -> dict[str, Any]:
    backend = {"service": {"name": service_name(endpoint), "port": {"number": SERVICE_PORT}}}
    return {"tls": [{"hosts": [endpoint.host], "secretName": f"{service_name(endpoint)}-tls"}],
            "rules": [{"host": endpoint.host, "http": {"paths": [
                {"path": path, "pathType": "Exact", "backend": backend} for path in PUBLIC_PATHS]}}]}
