"""Environment config: every stack file validates, and malformed configs fail fast.

A bad config must stop the program before any resource is registered, with one message
naming the stack file key path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.config import ConfigError, EnvironmentConfig, Kind, parse_environment
from components.render import load_stack_config, render_stack, stack_file

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


MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"mlops-platform:trackin": {"replicas": 2}},
     "mlops-platform:trackin: is not a known key"),
    ("unknown nested key", {"mlops-platform:serving.endpoints[0].replica": 2},
     "mlops-platform:serving.endpoints[0].replica: 2 is not a known key"),
    ("wrong type", {"mlops-platform:tracking.replicas": "three"},
     "mlops-platform:tracking.replicas: \"three\" input should be a valid integer"),
    ("negative replicas", {"mlops-platform:serving": {"endpoints": [
        {"name": "a", "model": "a"}, {"name": "b", "model": "b", "replicas": {"min": -1}}]}},
     "mlops-platform:serving.endpoints[1].replicas.min: -1 is below 0"),
    ("bad CIDR", {"mlops-platform:network.cidr": "10.0.0.0/33"},
     "mlops-platform:network.cidr: \"10.0.0.0/33\" is not an IPv4 CIDR block"),
    ("unknown environment kind", {"mlops-platform:kind": "production"},
     "mlops-platform:kind: \"production\" is not allowed; expected one of 'dev', 'staging', 'prod', 'ci' or 'local'"),
    ("negative size", {"mlops-platform:storage.noncurrentVersionDays": -5},
     "mlops-platform:storage.noncurrentVersionDays: -5 is below 1"),
    ("min above max", {"mlops-platform:cluster.trainingPools[0].minSize": 9},
     "mlops-platform:cluster.trainingPools[0]: minSize 9 is above maxSize 6"),
    ("force destroy outside ci", {"mlops-platform:protection": {"forceDestroy": True}},
     "mlops-platform:protection.forceDestroy: true is only allowed for kind ci, not dev"),
    ("latest image tag", {"mlops-platform:workloads.imageTag": "latest"},
     "mlops-platform:workloads.imageTag: \"latest\" 'latest' is not allowed"),
    ("endpoint name not DNS", {"mlops-platform:serving.endpoints[0].name": "Churn_Model"},
     "mlops-platform:serving.endpoints[0].name: \"Churn_Model\" does not match the pattern"),
    ("missing tags", {"mlops-platform:tags": None},
     "mlops-platform:tags: is required"),
    ("public API endpoint open to the internet", {"mlops-platform:cluster.publicAccessCidrs": ["0.0.0.0/0"]},
     "opens the API server to the internet"),
    ("cloud none with an EKS cluster", {"mlops-platform:cloud": "none"},
     "mlops-platform:cluster.mode: 'create' must be 'kubeconfig' when cloud is 'none'"),
    ("existing cluster without a stack reference", {"mlops-platform:cluster": {"mode": "existing"}},
     "mlops-platform:cluster: mode 'existing' needs stackReference"),
    ("unknown training pool", {"mlops-platform:workloads.training[0].pool": "tpu"},
     "mlops-platform:workloads.training[0].pool: 'tpu' names unknown pool; known: ['cpu', 'gpu']"),
    ("bad cron schedule", {"mlops-platform:workloads.monitoring.schedule": "every hour"},
     "mlops-platform:workloads.monitoring.schedule: \"every hour\" does not match the pattern"),
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
