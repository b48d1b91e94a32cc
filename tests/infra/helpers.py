"""Small lookups over rendered stacks shared by the compute/services tests."""

from __future__ import annotations

import json
from typing import Any

from components.manifests import to_manifests
from components.render import RenderedResource, RenderResult

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"}


def manifests(result: RenderResult, kind: str | None = None) -> list[dict[str, Any]]:
    return [m for m in to_manifests(result) if kind is None or m["kind"] == kind]


def manifest(result: RenderResult, kind: str, name: str) -> dict[str, Any]:
    found = [m for m in manifests(result, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"{result.stack}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def workloads(result: RenderResult) -> list[dict[str, Any]]:
    return [m for m in manifests(result) if m["kind"] in WORKLOAD_KINDS]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def iam_documents(result: RenderResult) -> list[tuple[RenderedResource, dict[str, Any]]]:
    """Every inline IAM policy document (role policies and policies) the stack registers."""
    docs = []
    for r in result.resources:
        if r.type in ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy"):
            docs.append((r, json.loads(r.inputs["policy"])))
    return docs


def trust_documents(result: RenderResult) -> list[tuple[RenderedResource, dict[str, Any]]]:
    return [(r, json.loads(r.inputs["assumeRolePolicy"])) for r in result.of_type("aws:iam/role:Role")]
