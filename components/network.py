"""The environment's VPC: created (public + private subnets per AZ, NAT, flow logs) or existing ids.

`network.mode: create`: a VPC from `network.cidr`, one public and one private subnet per AZ
(2 AZs, 3 in prod and staging), one NAT gateway (dev/ci) or one per AZ (prod and staging, so an
AZ outage doesn't cut the others off), the subnet tags EKS uses to place load balancers, and VPC
flow logs to CloudWatch in prod and staging (the log group kept like prod data). `network.mode: existing`: the ids from config, nothing created.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import EnvironmentConfig, NetworkConfig


@dataclass(frozen=True)
class NetworkArgs:
    network: NetworkConfig
    environment: str
    az_count: int
    nat_per_az: bool
    flow_logs: bool
    log_retention_days: int
    protect: bool  # what holds logs is kept like prod data
    retain_on_delete: bool

    @classmethod
    def of(cls, env: EnvironmentConfig) -> NetworkArgs:
        return cls(env.network, env.name, env.az_count, env.nat_per_az, env.flow_logs, env.log_retention_days,
                   env.protect, env.retain_on_delete)


def subnet_cidrs(cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """Public /20-ish and private blocks carved from the VPC CIDR: private subnets get the big halves."""
    vpc = ipaddress.IPv4Network(cidr)
    halves = list(vpc.subnets(prefixlen_diff=1))
    # Private: the first half split in 4 (room for up to 4 AZs at this size; 6 needs /3).
    diff = 2 if az_count <= 4 else 3
    private = [str(s) for s in list(halves[0].subnets(prefixlen_diff=diff))[:az_count]]
    public = [str(s) for s in list(halves[1].subnets(prefixlen_diff=diff + 1))[:az_count]]
    return public, private


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:network:Network", name, None, opts)
        net = args.network
        if net.mode == "existing":
            self.vpc_id = pulumi.Output.from_input(net.vpc_id or "")
            self.private_subnet_ids = [pulumi.Output.from_input(s) for s in net.private_subnet_ids]
            self.public_subnet_ids = [pulumi.Output.from_input(s) for s in net.public_subnet_ids]
        else:
            self._create(name, args)
        self.register_outputs({"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids})

    def _create(self, name: str, args: NetworkArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        env_name = args.environment
        cluster_tag = f"kubernetes.io/cluster/mlops-{env_name}"
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.network.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"mlops-{env_name}"},
            opts=child,
        )
        # Nothing may use the default security group: it allows all traffic inside the VPC.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, ingress=[], egress=[], opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=child)
        zones = aws.get_availability_zones_output(state="available", opts=pulumi.InvokeOutputOptions(parent=self))
        public_cidrs, private_cidrs = subnet_cidrs(args.network.cidr, args.az_count)
        one_nat_per_az = args.nat_per_az

        public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id,
                                       routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}], opts=child)
        publics, privates, nats = [], [], []
        for i in range(args.az_count):
            az = zones.names[i]
            public = aws.ec2.Subnet(
                f"{name}-public-{i}", vpc_id=vpc.id, cidr_block=public_cidrs[i], availability_zone=az,
                map_public_ip_on_launch=False,
                tags={"Name": f"mlops-{env_name}-public-{i}", "kubernetes.io/role/elb": "1", cluster_tag: "shared"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=public.id, route_table_id=public_rt.id,
                                          opts=child)
            private = aws.ec2.Subnet(
                f"{name}-private-{i}", vpc_id=vpc.id, cidr_block=private_cidrs[i], availability_zone=az,
                tags={"Name": f"mlops-{env_name}-private-{i}", "kubernetes.io/role/internal-elb": "1",
                      cluster_tag: "shared"},
                opts=child,
            )
            if i == 0 or one_nat_per_az:
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", opts=child)
                nats.append(aws.ec2.NatGateway(f"{name}-nat-{i}", subnet_id=public.id, allocation_id=eip.id,
                                               opts=pulumi.ResourceOptions(parent=self, depends_on=[igw])))
            nat = nats[i] if one_nat_per_az else nats[0]
            private_rt = aws.ec2.RouteTable(f"{name}-private-{i}", vpc_id=vpc.id,
                                            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                                            opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=private.id,
                                          route_table_id=private_rt.id, opts=child)
            publics.append(public.id)
            privates.append(private.id)

        if args.flow_logs:
            self._flow_logs(name, args, vpc)
        self.vpc_id = vpc.id
        self.public_subnet_ids = publics
        self.private_subnet_ids = privates

    def _flow_logs(self, name: str, args: NetworkArgs, vpc: aws.ec2.Vpc) -> None:
        child = pulumi.ResourceOptions(parent=self)
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs", name=f"/mlops/{args.environment}/vpc-flow-logs",
            retention_in_days=args.log_retention_days,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect,
                                        retain_on_delete=args.retain_on_delete))
        role = aws.iam.Role(
            f"{name}-flow-logs",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
                "Action": "sts:AssumeRole"}]}),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs",
            role=role.id,
            policy=log_group.arn.apply(lambda arn: json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                "Resource": [arn, f"{arn}:*"]}]})),
            opts=child,
        )
        aws.ec2.FlowLog(f"{name}-flow-logs", vpc_id=vpc.id, traffic_type="ALL", log_destination=log_group.arn,
                        iam_role_arn=role.arn, opts=child)
