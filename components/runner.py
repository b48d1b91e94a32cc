"""The deploy runner: a self-hosted GitHub Actions runner inside the VPC that reaches the private API.

The cluster's API endpoint is private (README "Deploy"), so whatever applies the Kubernetes layer
must run inside the VPC. This is one EC2 instance (an Auto Scaling group of one, so it comes back
when it dies) in a private subnet:

- no inbound rules at all, outbound HTTPS only (GitHub, Pulumi Cloud, AWS APIs, through the NAT);
  the cluster security group admits it on 443;
- operators reach it with SSM Session Manager, never SSH; IMDSv2 with hop limit 1, encrypted disk;
- its instance role can read only its two SSM parameters (`/mlops/<env>/github-runner/url` and
  `.../registration-token`, put there during bootstrap). It has no deploy permissions: the workflow
  assumes the deploy role through GitHub's OIDC as before, and EKS authenticates that role.
- it registers with the label `mlops-<env>`; the deploy workflow's jobs for this environment run
  on `[self-hosted, mlops-<env>]`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

AL2023_AMI = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SSM_CORE = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
HTTPS = 443


@dataclass(frozen=True)
class RunnerArgs:
    environment: str
    region: str
    instance_type: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: list[pulumi.Input[str]]
    cluster_security_group_id: pulumi.Input[str]
    tags: dict[str, str]  # the provider's default tags do not reach Auto Scaling groups


def parameter_prefix(environment: str) -> str:
    return f"/mlops/{environment}/github-runner"


def runner_label(environment: str) -> str:
    return f"mlops-{environment}"


def user_data(environment: str, region: str) -> str:
    """Install the tools a deploy job uses, then register and start the runner (as an unprivileged user)."""
    prefix = parameter_prefix(environment)
    return "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        "dnf install -y -q git jq tar gzip libicu python3.11 python3.11-pip docker",
        "systemctl enable --now docker",  # registry logins (prod's deploy copies the image between registries)
        "useradd --create-home --groups docker runner",
        "cd /home/runner",
        "url=$(curl -fsSL https://api.github.com/repos/actions/runner/releases/latest | jq -r "
        "'.assets[] | select(.name | test(\"linux-x64-[0-9.]+.tar.gz$\")) | .browser_download_url')",
        "curl -fsSL \"$url\" | sudo -u runner tar xz",
        f"repo=$(aws ssm get-parameter --region {region} --name {prefix}/url --query Parameter.Value --output text)",
        f"token=$(aws ssm get-parameter --region {region} --name {prefix}/registration-token --with-decryption "
        "--query Parameter.Value --output text)",
        "id=$(TOKEN=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token "
        "-H 'X-aws-ec2-metadata-token-ttl-seconds: 60') && curl -fsS -H \"X-aws-ec2-metadata-token: $TOKEN\" "
        "http://169.254.169.254/latest/meta-data/instance-id)",
        f"sudo -u runner ./config.sh --unattended --replace --url \"$repo\" --token \"$token\" "
        f"--name \"{runner_label(environment)}-$id\" --labels {runner_label(environment)}",
        "./svc.sh install runner && ./svc.sh start",
        "",
    ])


class DeployRunner(pulumi.ComponentResource):
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: RunnerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:runner:DeployRunner", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{name}-sg", description="Deploy runner: no inbound, HTTPS out", vpc_id=args.vpc_id, ingress=[],
            egress=[{"protocol": "tcp", "from_port": HTTPS, "to_port": HTTPS, "cidr_blocks": ["0.0.0.0/0"],
                     "description": "GitHub, Pulumi Cloud and AWS APIs through the NAT"}],
            opts=child)
        # The private API endpoint admits the runner (its only way in).
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-to-api", security_group_id=args.cluster_security_group_id,
            referenced_security_group_id=group.id, ip_protocol="tcp", from_port=HTTPS, to_port=HTTPS,
            description="deploy runner to the Kubernetes API", opts=child)
        profile = self._instance_profile(name, args)
        template = aws.ec2.LaunchTemplate(
            name,
            image_id=AL2023_AMI,
            instance_type=args.instance_type,
            iam_instance_profile={"arn": profile.arn},
            vpc_security_group_ids=[group.id],
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
            block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                "volume_size": 50, "volume_type": "gp3", "encrypted": "true", "delete_on_termination": "true"}}],
            user_data=base64.b64encode(user_data(args.environment, args.region).encode()).decode(),
            update_default_version=True,
            opts=child)
        aws.autoscaling.Group(
            name,
            min_size=1, max_size=1, desired_capacity=1,
            vpc_zone_identifiers=args.private_subnet_ids,
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            # A new launch template version (user data, AMI) replaces the instance.
            instance_refresh={"strategy": "Rolling", "preferences": {"min_healthy_percentage": 0}},
            tags=[{"key": k, "value": v, "propagate_at_launch": True}
                  for k, v in {**args.tags, "Name": runner_label(args.environment)}.items()],
            opts=child)
        self.security_group_id = group.id
        self.register_outputs({"security_group_id": self.security_group_id})

    def _instance_profile(self, name: str, args: RunnerArgs) -> aws.iam.InstanceProfile:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-instance",
            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
            managed_policy_arns=[SSM_CORE],
            opts=child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        aws.iam.RolePolicy(f"{name}-instance", role=role.id, policy=account.apply(lambda a: json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Sid": "OwnRegistrationParameters", "Effect": "Allow", "Action": "ssm:GetParameter",
                "Resource": f"arn:aws:ssm:{args.region}:{a}:parameter{parameter_prefix(args.environment)}/*"}]})),
            opts=child)
        return aws.iam.InstanceProfile(f"{name}-instance", role=role.name, opts=child)
