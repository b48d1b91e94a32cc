"""Rendered Kubernetes resources as plain manifests, for validators, checkov and policy checks.

`to_manifests(result)` turns every `kubernetes:<group>/<version>:<Kind>` custom resource of
a render into the dict `kubectl apply` would take: apiVersion, kind, metadata with a
concrete name (Pulumi's logical name when the program lets Pulumi auto-name it) and
namespace, and the object's body. Pulumi-only wire details are removed: values arrive
through protobuf Structs, so integers come back as floats and are turned back into ints.
Helm releases are not Kubernetes objects and are skipped (their charts are rendered by Helm).
"""

from __future__ import annotations

from typing import Any

from pulumi.runtime import rpc

from components.render import RenderedResource, RenderResult

# Kinds without a namespace.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "IngressClass", "ValidatingAdmissionPolicy",
                  "ValidatingAdmissionPolicyBinding"}
NOT_OBJECTS = {"kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v4:Chart", "kubernetes:yaml/v2:ConfigGroup",
               "kubernetes:yaml/v2:ConfigFile"}


def api_version_and_kind(type_: str) -> tuple[str, str]:
    """`kubernetes:apps/v1:Deployment` -> ("apps/v1", "Deployment"); the core group has no prefix."""
    _, group_version, kind = type_.split(":")
    group, version = group_version.rsplit("/", 1)
    return (version if group == "core" else f"{group}/{version}"), kind


def is_kubernetes_object(resource: RenderedResource) -> bool:
    return resource.custom and resource.type.startswith("kubernetes:") and resource.type not in NOT_OBJECTS


def to_manifest(resource: RenderedResource) -> dict[str, Any]:
    api_version, kind = api_version_and_kind(resource.type)
    body = {k: _clean(v) for k, v in resource.inputs.items() if k not in ("apiVersion", "kind", "metadata")}
    metadata = dict(_clean(resource.inputs.get("metadata") or {}))
    metadata.setdefault("name", resource.name)
    if kind in CLUSTER_SCOPED:
        metadata.pop("namespace", None)
    else:
        metadata.setdefault("namespace", "default")
    for key in ("labels", "annotations"):
        if key in metadata and not metadata[key]:
            del metadata[key]
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def to_manifests(result: RenderResult) -> list[dict[str, Any]]:
    """Every Kubernetes object the program registered, as a plain manifest, in registration order."""
    return [to_manifest(r) for r in result.resources if is_kubernetes_object(r)]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            # A Pulumi secret on the wire: the manifest carries its plain value.
            return _clean(value.get("value"))
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
