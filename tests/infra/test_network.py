"""Network: VPC, subnets per AZ, NAT per kind, EKS subnet tags, flow logs in prod and staging (prod-shaped)."""

from __future__ import annotations

import ipaddress

import pytest

from components.network import subnet_cidrs
from components.render import RenderResult

CREATE_STACKS = ["dev", "staging", "prod"]


def subnets(result: RenderResult, role: str) -> list:
    return [r for r in result.of_type("aws:ec2/subnet:Subnet") if r.name.startswith(f"network-{role}-")]


@pytest.mark.parametrize(("stack", "azs"), [("dev", 2), ("staging", 3), ("prod", 3)])
def test_public_and_private_subnets_per_az(rendered: dict[str, RenderResult], stack: str, azs: int) -> None:
    result = rendered[stack]
    assert len(subnets(result, "public")) == azs
    assert len(subnets(result, "private")) == azs
    assert len({s.inputs["availabilityZone"] for s in subnets(result, "private")}) == azs


@pytest.mark.parametrize("stack", CREATE_STACKS)
def test_vpc_cidr_from_config_and_subnets_inside_it(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    vpc = result.one("aws:ec2/vpc:Vpc")
    network = ipaddress.IPv4Network(vpc.inputs["cidrBlock"])
    assert vpc.inputs["cidrBlock"] == {"dev": "10.10.0.0/16", "staging": "10.20.0.0/16", "prod": "10.30.0.0/16"}[stack]
    blocks = [ipaddress.IPv4Network(s.inputs["cidrBlock"]) for s in result.of_type("aws:ec2/subnet:Subnet")]
    assert all(b.subnet_of(network) for b in blocks)
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1:])


@pytest.mark.parametrize(("stack", "nats"), [("dev", 1), ("staging", 3), ("prod", 3)])
def test_nat_gateways_one_or_one_per_az_in_prod(rendered: dict[str, RenderResult], stack: str, nats: int) -> None:
    assert len(rendered[stack].of_type("aws:ec2/natGateway:NatGateway")) == nats


@pytest.mark.parametrize("stack", CREATE_STACKS)
def test_subnet_tags_for_eks_load_balancers(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    for subnet in subnets(result, "public"):
        assert subnet.inputs["tags"]["kubernetes.io/role/elb"] == "1"
        assert subnet.inputs["mapPublicIpOnLaunch"] is False
    for subnet in subnets(result, "private"):
        assert subnet.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1"
        assert subnet.inputs["tags"][f"kubernetes.io/cluster/mlops-{stack}"] == "shared"


@pytest.mark.parametrize("stack", CREATE_STACKS)
def test_flow_logs_in_prod_and_staging(rendered: dict[str, RenderResult], stack: str) -> None:
    logs = rendered[stack].of_type("aws:ec2/flowLog:FlowLog")
    if stack in ("prod", "staging"):
        assert len(logs) == 1 and logs[0].inputs["trafficType"] == "ALL"
    else:
        assert logs == []


@pytest.mark.parametrize("stack", CREATE_STACKS)
def test_default_security_group_allows_nothing(rendered: dict[str, RenderResult], stack: str) -> None:
    sg = rendered[stack].one("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert sg.inputs.get("ingress", []) == [] and sg.inputs.get("egress", []) == []


@pytest.mark.parametrize("stack", ["ci", "local"])
def test_no_vpc_without_a_cluster_to_create(rendered: dict[str, RenderResult], stack: str) -> None:
    assert rendered[stack].of_type("aws:ec2/vpc:Vpc") == []


@pytest.mark.parametrize("azs", [2, 3, 4, 6])
def test_subnet_plan_fits_any_az_count(azs: int) -> None:
    public, private = subnet_cidrs("10.0.0.0/16", azs)
    assert len(public) == len(private) == azs
    nets = [ipaddress.IPv4Network(c) for c in public + private]
    assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
