"""Network policies: deny everything in the namespace, then admit only what each service needs.

- default-deny: no ingress, no egress, for every pod.
- DNS egress to kube-dns for every pod.
- Egress anywhere except the instance metadata address (169.254.169.254): pods must use
  IRSA, never the node's credentials.
- The tracking server admits only pods labelled as tracking clients (workloads, serving)
  and the ingress controller, and the scraper on its metrics sidecar's port only; Postgres
  admits only the tracking server; serving admits pods of the namespace and the ingress
  controller; MinIO (cloud: none) admits the namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import Cloud, EnvironmentConfig
from components.database import LABELS as POSTGRES_LABELS
from components.database import PORT as POSTGRES_PORT
from components.observability import scraper_peer
from components.serving import PORT as SERVING_PORT
from components.tracking import CLIENT_LABEL
from components.tracking import LABELS as TRACKING_LABELS
from components.tracking import METRICS_PORT as TRACKING_METRICS_PORT
from components.tracking import PORT as TRACKING_PORT

METADATA_ADDRESS = "169.254.169.254/32"
INGRESS_CONTROLLER_NAMESPACE = "ingress-nginx"
_INGRESS_CONTROLLER = {"namespaceSelector": {"matchLabels": {
    "kubernetes.io/metadata.name": INGRESS_CONTROLLER_NAMESPACE}}}


@dataclass(frozen=True)
class NetworkPoliciesArgs:
    """Which services exist and who may reach them (not the whole environment)."""

    namespace: pulumi.Input[str]
    tracking_host: bool  # an Ingress: admit the ingress controller
    serving_hosts: bool
    in_cluster_database: bool
    minio: bool  # cloud: none
    scraper: dict[str, Any]  # the Prometheus pods that scrape /metrics (components/observability.py)

    @classmethod
    def of(cls, env: EnvironmentConfig, namespace: pulumi.Input[str]) -> NetworkPoliciesArgs:
        return cls(namespace, bool(env.tracking.host), any(e.host for e in env.serving.endpoints),
                   env.in_cluster_database, env.cloud == Cloud.none, scraper_peer(env))


class NetworkPolicies(pulumi.ComponentResource):
    def __init__(self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:netpol:NetworkPolicies", name, None, opts)
        policies: dict[str, dict[str, Any]] = {
            "default-deny": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            "allow-dns": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }],
            },
            "allow-egress-except-metadata": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [METADATA_ADDRESS]}}]}],
            },
            "tracking-ingress": {
                "podSelector": {"matchLabels": TRACKING_LABELS},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": CLIENT_LABEL}}]
                    + ([_INGRESS_CONTROLLER] if args.tracking_host else []),
                    "ports": [{"protocol": "TCP", "port": TRACKING_PORT}],
                }, {
                    # The scraper reads the metrics sidecar's port only, not the API.
                    "from": [args.scraper],
                    "ports": [{"protocol": "TCP", "port": TRACKING_METRICS_PORT}],
                }],
            },
            "serving-ingress": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "serving"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {}}, args.scraper]
                    + ([_INGRESS_CONTROLLER] if args.serving_hosts else []),
                    "ports": [{"protocol": "TCP", "port": SERVING_PORT}],
                }],
            },
        }
        if args.in_cluster_database:
            policies["postgres-ingress"] = {
                "podSelector": {"matchLabels": POSTGRES_LABELS},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": TRACKING_LABELS}}],
                             "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}]}],
            }
        if args.minio:
            policies["minio-ingress"] = {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "minio"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 9000}]}],
            }
        for policy_name, spec in policies.items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy_name}",
                metadata={"name": policy_name, "namespace": args.namespace,
                          "labels": {"app.kubernetes.io/part-of": "mlops-platform"}},
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})
