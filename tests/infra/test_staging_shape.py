"""Staging is shaped like prod, except exactly where the README says (issue 13, item 8).

Each fact below is read from the rendered staging and prod stacks; names, CIDRs and hosts are
identity, not shape, and are left out. The facts that differ must be exactly the ones listed in
the README's "Staging and prod" table, so a new difference fails here until it is documented (and a
documented difference that no longer exists fails too).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from components.render import ROOT, RenderResult
from tests.infra.helpers import manifests

RDS = "aws:rds/instance:Instance"


def _rds(key: str) -> Callable[[RenderResult], Any]:
    return lambda r: r.one(RDS).inputs.get(key)


def _pools(key: str) -> Callable[[RenderResult], Any]:
    return lambda r: sorted((g.name, str(g.inputs.get(key))) for g in r.of_type("aws:eks/nodeGroup:NodeGroup"))


def _deployment(name: str, path: Callable[[dict[str, Any]], Any]) -> Callable[[RenderResult], Any]:
    return lambda r: [path(m) for m in manifests(r, "Deployment") if m["metadata"]["name"] == name]


FACTS: dict[str, Callable[[RenderResult], Any]] = {
    "availability zones": lambda r: len([s for s in r.of_type("aws:ec2/subnet:Subnet") if "private" in s.name]),
    "NAT gateways": lambda r: len(r.of_type("aws:ec2/natGateway:NatGateway")),
    "flow logs": lambda r: len(r.of_type("aws:ec2/flowLog:FlowLog")),
    "private API endpoint": lambda r: r.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]["endpointPublicAccess"],
    "EKS version and upgrade policy": lambda r: (r.one("aws:eks/cluster:Cluster").inputs["version"],
                                                 r.one("aws:eks/cluster:Cluster").inputs["upgradePolicy"]),
    "EKS deletion protection": lambda r: r.one("aws:eks/cluster:Cluster").inputs.get("deletionProtection"),
    "add-ons": lambda r: sorted(a.inputs["addonName"] for a in r.of_type("aws:eks/addon:Addon")),
    "cluster services": lambda r: sorted(x.inputs["chart"] for x in r.of_type("kubernetes:helm.sh/v3:Release")),
    "node pool kinds": _pools("amiType"),
    "node pool capacity types": _pools("capacityType"),
    "node instance types": _pools("instanceTypes"),
    "node pool sizes": _pools("scalingConfig"),
    "RDS multi-AZ": _rds("multiAz"),
    "RDS deletion protection and final snapshot": lambda r: (_rds("deletionProtection")(r),
                                                             _rds("skipFinalSnapshot")(r)),
    "RDS backups": _rds("backupRetentionPeriod"),
    "RDS enhanced monitoring": _rds("monitoringInterval"),
    "RDS instance class": _rds("instanceClass"),
    "RDS storage": _rds("allocatedStorage"),
    "S3 access logs": lambda r: len(r.of_type("aws:s3/bucketLogging:BucketLogging")),
    "log retention": lambda r: sorted(g.inputs["retentionInDays"] for g in r.of_type("aws:cloudwatch/logGroup:LogGroup")),
    "network policies": lambda r: sorted(m["metadata"]["name"] for m in manifests(r, "NetworkPolicy")),
    "tracking replicas": _deployment("mlflow", lambda m: m["spec"]["replicas"]),
    "tracking workers": _deployment("mlflow", lambda m: m["spec"]["template"]["spec"]["containers"][0]["command"]),
    "serving replicas": lambda r: [m["spec"]["minReplicas"] for m in manifests(r, "HorizontalPodAutoscaler")]
    + [m["spec"]["maxReplicas"] for m in manifests(r, "HorizontalPodAutoscaler")],
    "serving resources": lambda r: [c["resources"] for m in manifests(r, "Deployment")
                                    if m["metadata"]["name"].startswith("serve-")
                                    for c in m["spec"]["template"]["spec"]["containers"]],
    "training search shards": lambda r: sorted(str(m["spec"]) for m in manifests(r, "CronJob")
                                               if m["metadata"]["name"].startswith("train-")),
    "Pulumi protect and retain": lambda r: sorted(x.name for x in r.resources if x.protect or x.retain_on_delete),
    "ingress hosts": lambda r: len(manifests(r, "Ingress")),
}


def _normalise(value: Any, stack: str) -> Any:
    """Identity is not shape: the environment's own name in a value is replaced by a placeholder."""
    return re.sub(rf"\b{stack}\b", "<env>", repr(value)).replace("staging.example.com", "example.com")


def documented_differences() -> set[str]:
    """The first column (backticked names) of the README's "Staging and prod" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Staging and prod", 1)[1].split("\n#", 1)[0]
    return {m.group(1) for line in section.splitlines() if line.startswith("| `")
            for m in [re.match(r"\| `([^`]+)`", line)] if m}


def test_staging_differs_from_prod_exactly_where_the_readme_says(rendered: dict[str, RenderResult]) -> None:
    staging, prod = rendered["staging"], rendered["prod"]
    differing = {name for name, fact in FACTS.items()
                 if _normalise(fact(staging), "staging") != _normalise(fact(prod), "prod")}
    documented = documented_differences()
    assert documented, "README has no 'Staging and prod' table"
    assert documented <= set(FACTS), f"README names facts this test does not read: {documented - set(FACTS)}"
    assert differing == documented


def test_the_shape_facts_are_alive(rendered: dict[str, RenderResult]) -> None:
    """dev is not prod-shaped: the same facts tell it apart (so they can fail)."""
    dev, prod = rendered["dev"], rendered["prod"]
    for name in ("availability zones", "NAT gateways", "flow logs", "RDS multi-AZ", "RDS backups", "S3 access logs",
                 "RDS deletion protection and final snapshot", "RDS enhanced monitoring"):
        assert _normalise(FACTS[name](dev), "dev") != _normalise(FACTS[name](prod), "prod"), name
