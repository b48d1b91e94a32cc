"""Model serving endpoints: one Deployment per `serving.endpoints` entry, running `mlops serve`.

Each endpoint serves `models:/<model>@<alias>` with MLflow's scoring protocol on port 8080
(`/ping` readiness, `/health` liveness), behind a ClusterIP Service, with an HPA on CPU, a
PDB, an optional TLS Ingress, and inference capture to the capture bucket. Changing
`modelVersion` in config changes a pod-template annotation, so the Deployment rolls and the
new pods resolve the alias again. Endpoints run on the system pool, never on training nodes.
On AWS the pods get an IRSA role that can read the artifact bucket and write the capture
bucket, nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.config import EnvironmentConfig, ServingEndpoint
from components.irsa import OidcProvider, irsa_role, s3_statements, service_account_annotations
from components.podenv import ContractValues, contract_env, contract_env_from
from components.security import container_security_context, pod_security_context, resources, scratch_volume
from components.tracking import CLIENT_LABEL, ingress

PORT = 8080
SERVICE_PORT = 80
MODEL_VERSION_ANNOTATION = "mlops-platform/model-version"


@dataclass(frozen=True)
class ServingArgs:
    env: EnvironmentConfig
    namespace: pulumi.Input[str]
    contract: ContractValues
    artifact_bucket_arn: pulumi.Input[str]
    capture_bucket_arn: pulumi.Input[str]
    oidc: OidcProvider | None = None


def endpoint_url(env: EnvironmentConfig, endpoint: ServingEndpoint) -> str:
    if endpoint.host:
        return f"https://{endpoint.host}"
    return f"http://{service_name(endpoint)}.{env.namespace}.svc.cluster.local:{SERVICE_PORT}"


def service_name(endpoint: ServingEndpoint) -> str:
    return f"serve-{endpoint.name}"


class Serving(pulumi.ComponentResource):
    endpoints: dict[str, str]  # name -> URL

    def __init__(self, name: str, args: ServingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:serving:Serving", name, None, opts)
        env = args.env
        role = None
        if args.oidc is not None and env.serving.endpoints:
            policy = pulumi.Output.all(args.artifact_bucket_arn, args.capture_bucket_arn,
                                      args.contract.kms_key_arn).apply(
                lambda v: json.dumps({"Version": "2012-10-17", "Statement": [
                    *s3_statements(read=[v[0]], kms_key_arn=None),
                    *[{**s, "Sid": f"Capture{s['Sid']}"} for s in s3_statements(write=[v[1]], prefix="captures/*")],
                    *([{"Sid": "UseBucketKey", "Effect": "Allow",
                        "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"],
                        "Resource": v[2]}] if v[2] else []),
                ]}))
            role = irsa_role(f"{name}-irsa", env, args.oidc, env.namespace, "serving", policy, parent=self)
        account = None
        if env.serving.endpoints:
            account = k8s.core.v1.ServiceAccount(
                f"{name}-sa",
                metadata={"name": "serving", "namespace": args.namespace,
                          "labels": {"app.kubernetes.io/part-of": "mlops-platform"},
                          "annotations": service_account_annotations(role)},
                automount_service_account_token=False,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.endpoints = {}
        for endpoint in env.serving.endpoints:
            self._endpoint(name, args, endpoint, account)
            self.endpoints[endpoint.name] = endpoint_url(env, endpoint)
        self.register_outputs({"endpoints": self.endpoints})

    def _endpoint(self, name: str, args: ServingArgs, endpoint: ServingEndpoint,
                  account: k8s.core.v1.ServiceAccount | None) -> None:
        env = args.env
        child = pulumi.ResourceOptions(parent=self)
        rname = f"{name}-{endpoint.name}"
        svc = service_name(endpoint)
        labels = {"app.kubernetes.io/name": svc, "app.kubernetes.io/component": "serving",
                  "app.kubernetes.io/part-of": "mlops-platform", "mlops-platform/endpoint": endpoint.name}
        serve_env = [
            {"name": "MLOPS_SERVE_MODEL", "value": endpoint.model},
            {"name": "MLOPS_SERVE_ALIAS", "value": endpoint.alias},
            {"name": "MLOPS_SERVE_WORKERS", "value": str(endpoint.workers)},
            {"name": "MLOPS_SERVE_MAX_BATCH_ROWS", "value": str(endpoint.max_batch_rows)},
            {"name": "MLOPS_SERVE_MAX_WAIT_MS", "value": str(endpoint.max_wait_ms)},
            {"name": "MLOPS_SERVE_ENDPOINT", "value": endpoint.name},
            {"name": "MLOPS_SERVE_CAPTURE", "value": "true" if endpoint.capture else "false"},
            {"name": "HOME", "value": "/tmp"},
        ]
        min_replicas = max(endpoint.replicas.min, 1)
        k8s.apps.v1.Deployment(
            rname,
            metadata={"name": svc, "namespace": args.namespace, "labels": labels},
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
                    "spec": {
                        "serviceAccountName": account.metadata["name"] if account else "default",
                        "automountServiceAccountToken": False,
                        "securityContext": pod_security_context(),
                        "nodeSelector": {"mlops-platform/pool": "system"}
                        if env.cluster.mode in ("create", "existing") else {},
                        "topologySpreadConstraints": [{
                            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": labels}}],
                        "containers": [{
                            "name": "serve",
                            "image": f"{env.workloads.image}:{env.workloads.image_tag}",
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["mlops", "serve"],
                            "env": [*contract_env(args.contract), *serve_env],
                            "envFrom": contract_env_from(args.contract),
                            "ports": [{"name": "http", "containerPort": PORT}],
                            "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                                              "initialDelaySeconds": 30, "periodSeconds": 15, "failureThreshold": 4},
                            "startupProbe": {"httpGet": {"path": "/ping", "port": "http"},
                                             "periodSeconds": 5, "failureThreshold": 120},
                            "resources": resources(endpoint.cpu, endpoint.memory),
                            "securityContext": container_security_context(),
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [scratch_volume("tmp", "2Gi")],
                    },
                },
            },
            # The HPA owns replicas after creation.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["spec.replicas"]),
        )
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{rname}-hpa",
            metadata={"name": svc, "namespace": args.namespace, "labels": labels},
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc},
                "minReplicas": min_replicas,
                "maxReplicas": max(endpoint.replicas.max, min_replicas),
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
            },
            opts=child,
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{rname}-pdb",
            metadata={"name": svc, "namespace": args.namespace, "labels": labels},
            # One replica: allow eviction (maxUnavailable 1) so node drains never hang.
            spec={"maxUnavailable": 1, "selector": {"matchLabels": labels}},
            opts=child,
        )
        k8s.core.v1.Service(
            f"{rname}-svc",
            metadata={"name": svc, "namespace": args.namespace, "labels": labels},
            spec={"type": "ClusterIP", "selector": labels,
                  "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]},
            opts=child,
        )
        if endpoint.host:
            ingress(self, f"{rname}-ingress", svc, args.namespace, endpoint.host, None, svc, SERVICE_PORT, labels)
