"""Every Kubernetes object of every stack is a valid manifest for the configured Kubernetes version."""

from __future__ import annotations

import kubernetes_validate
import pytest

from components.config import parse_environment
from components.manifests import CLUSTER_SCOPED, api_version_and_kind, to_manifests
from components.render import RenderResult, load_stack_config, stack_file
from tests.infra.conftest import ALL_STACKS


def kubernetes_version(stack: str) -> str:
    """cluster.version from the stack file (the default when unset, e.g. for local)."""
    raw = {k.split(":", 1)[1]: v for k, v in load_stack_config(stack_file(stack)).items()
           if k.startswith("mlops-platform:") and not (isinstance(v, dict) and set(v) == {"secure"})}
    return parse_environment(raw).cluster.version


CUSTOM_RESOURCE_GROUPS = {"monitoring.coreos.com"}  # Prometheus Operator CRDs (ServiceMonitor, PrometheusRule)


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_object_validates_strictly(rendered: dict[str, RenderResult], stack: str) -> None:
    version = kubernetes_version(stack)
    manifests = to_manifests(rendered[stack])
    assert len(manifests) >= 15
    errors = []
    for manifest in manifests:
        if manifest["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS:
            continue  # not in the builtin schemas: tests/infra/test_observability.py checks them structurally
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {exc.message}")
    assert errors == []


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_kubernetes_resource_is_converted(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    objects = [r for r in result.resources if r.custom and r.type.startswith("kubernetes:")
               and r.type != "kubernetes:helm.sh/v3:Release"]
    manifests = to_manifests(result)
    assert len(manifests) == len(objects)
    for manifest in manifests:
        assert manifest["metadata"]["name"]
        if manifest["kind"] not in CLUSTER_SCOPED:
            assert manifest["metadata"]["namespace"] == f"mlops-{stack}"
        assert not any(k.startswith("__") for k in manifest)


def test_integers_survive_the_wire() -> None:
    """protobuf turns ints into floats; strict schemas reject 5000.0 where an integer is required."""
    from components.manifests import to_manifest
    from components.render import RenderedResource

    resource = RenderedResource(type="kubernetes:core/v1:Service", name="svc", urn="u", custom=True,
                                inputs={"metadata": {"name": "svc", "namespace": "ns"},
                                        "spec": {"ports": [{"port": 5000.0}]}})
    assert to_manifest(resource)["spec"]["ports"][0]["port"] == 5000
    assert isinstance(to_manifest(resource)["spec"]["ports"][0]["port"], int)


def test_a_broken_manifest_is_caught() -> None:
    """The validator is live: a misspelled field fails strict validation."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "y"},
           "spec": {"prots": [{"port": 80}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.31", strict=True)


@pytest.mark.parametrize(("type_", "expected"), [
    ("kubernetes:core/v1:Secret", ("v1", "Secret")),
    ("kubernetes:apps/v1:Deployment", ("apps/v1", "Deployment")),
    ("kubernetes:networking.k8s.io/v1:NetworkPolicy", ("networking.k8s.io/v1", "NetworkPolicy")),
])
def test_api_version_from_type(type_: str, expected: tuple[str, str]) -> None:
    assert api_version_and_kind(type_) == expected
