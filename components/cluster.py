"""Where the environment's Kubernetes workloads run, and the one provider that reaches it.

Modes (cluster.mode):
- `create` (cloud: aws): an EKS cluster (API auth mode, KMS-encrypted secrets, control-plane
  logs, private endpoint; public only for `publicAccessCidrs`, never in prod by default),
  its IAM OIDC provider for IRSA, the core add-ons, an on-demand system node group, the
  training node groups from config (scale from zero, spot, GPU AMI, tainted), and the
  cluster autoscaler.
- `existing` (cloud: aws): attach to the cluster another stack created, through a
  StackReference to `cluster.stackReference`; nothing cluster-wide is created.
- `kubeconfig` (cloud: none): any cluster (kind, k3d, minikube) from a kubeconfig context.

Every Kubernetes resource of the environment goes through `Cluster.provider`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.config import EnvironmentConfig, Kind, NodePool, Secrets
from components.irsa import OidcProvider, irsa_role

ADDONS = ("vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent", "aws-ebs-csi-driver")
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
TRAINING_TAINT_KEY = "mlops-platform/training"
POOL_LABEL = "mlops-platform/pool"
AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
AUTOSCALER_CHART_VERSION = "9.43.2"
EKS_MANAGED = "arn:aws:iam::aws:policy"


@dataclass(frozen=True)
class ClusterArgs:
    env: EnvironmentConfig
    secrets: Secrets
    vpc_id: pulumi.Input[str] | None = None  # create mode: from Network
    private_subnet_ids: list[pulumi.Input[str]] | None = None


def training_labels(pool: NodePool) -> dict[str, str]:
    labels = {**pool.labels, POOL_LABEL: pool.name, "mlops-platform/node-role": "training"}
    if pool.gpu:
        labels["nvidia.com/gpu.present"] = "true"
    return labels


def training_taint(pool: NodePool) -> dict[str, str]:
    """Only pods that tolerate this land on training nodes (the jobs tolerate it)."""
    return {"key": TRAINING_TAINT_KEY, "value": pool.name, "effect": "NO_SCHEDULE"}


def autoscaler_tags(cluster_name: str, labels: dict[str, str], taints: list[dict[str, str]],
                    gpu: bool = False) -> dict[str, str]:
    """Node-template tags: how the cluster autoscaler knows a pool's labels/taints at zero nodes."""
    tags = {"k8s.io/cluster-autoscaler/enabled": "true", f"k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
    tags.update({f"k8s.io/cluster-autoscaler/node-template/label/{k}": v for k, v in labels.items()})
    for taint in taints:
        effect = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute"}.get(taint["effect"], taint["effect"])
        tags[f"k8s.io/cluster-autoscaler/node-template/taint/{taint['key']}"] = f"{taint['value']}:{effect}"
    if gpu:
        tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] = "1"
    return tags


def kubeconfig_for(cluster_name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token` (no long-lived credentials)."""
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
        "current-context": cluster_name,
        "users": [{"name": cluster_name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region],
        }}}],
    })


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    provider: k8s.Provider
    kubeconfig: pulumi.Output[str] | None
    oidc: OidcProvider | None
    vpc_id: pulumi.Output[str] | None
    private_subnet_ids: pulumi.Output[list[str]] | None
    security_group_id: pulumi.Output[str] | None
    training_pools: pulumi.Output[list[dict[str, Any]]]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:cluster:Cluster", name, None, opts)
        env = args.env
        self.oidc = None
        self.vpc_id = None
        self.private_subnet_ids = None
        self.security_group_id = None
        if env.cluster.mode == "create":
            self._create(name, args)
        elif env.cluster.mode == "existing":
            self._existing(name, env, args.secrets.kubeconfig)
        else:
            # No kubeconfig secret: the provider reads ~/.kube/config (or $KUBECONFIG) like kubectl.
            self.kubeconfig = args.secrets.kubeconfig
            self.name = pulumi.Output.from_input(env.cluster.context or "current-context")
            self.training_pools = pulumi.Output.from_input([])
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            context=env.cluster.context if env.cluster.mode == "kubeconfig" else None,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        if env.cluster.mode == "create":
            self._autoscaler(name, env, f"mlops-{env.name}")
        self.register_outputs({"name": self.name})

    # --- existing -------------------------------------------------------------------------

    def _existing(self, name: str, env: EnvironmentConfig, kubeconfig: pulumi.Output[str] | None) -> None:
        ref = pulumi.StackReference(f"{name}-owner", stack_name=env.cluster.stack_reference,
                                    opts=pulumi.ResourceOptions(parent=self))
        self.name = ref.require_output("cluster_name")
        # A kubeconfig secret (e.g. a CI service account's) wins over the owner stack's admin kubeconfig.
        self.kubeconfig = kubeconfig or pulumi.Output.secret(ref.require_output("kubeconfig"))
        self.oidc = OidcProvider(arn=ref.require_output("oidc_provider_arn"),
                                 url=ref.require_output("oidc_provider_url"))
        self.vpc_id = ref.require_output("vpc_id")
        self.private_subnet_ids = ref.require_output("private_subnet_ids")
        self.security_group_id = ref.require_output("cluster_security_group_id")
        self.training_pools = ref.get_output("training_pools")

    # --- create ---------------------------------------------------------------------------

    def _create(self, name: str, args: ClusterArgs) -> None:
        env = args.env
        if args.vpc_id is None or not args.private_subnet_ids:
            raise ValueError("cluster.mode 'create' needs the network's VPC and private subnets")
        child = pulumi.ResourceOptions(parent=self)
        cluster_name = f"mlops-{env.name}"

        secrets_key = aws.kms.Key(f"{name}-secrets-key", description=f"EKS {cluster_name}: envelope encryption of Secrets",
                                  enable_key_rotation=True, deletion_window_in_days=30 if env.protect else 7,
                                  opts=child)
        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", name=f"/aws/eks/{cluster_name}/cluster",
                                            retention_in_days=365 if env.kind == Kind.prod else 30, opts=child)
        role = aws.iam.Role(
            f"{name}-control-plane",
            assume_role_policy=_service_trust("eks.amazonaws.com"),
            managed_policy_arns=[f"{EKS_MANAGED}/AmazonEKSClusterPolicy"],
            opts=child,
        )
        public = bool(env.cluster.public_access_cidrs)
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=cluster_name,
            version=env.cluster.version,
            role_arn=role.arn,
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": True},
            encryption_config={"resources": ["secrets"], "provider": {"key_arn": secrets_key.arn}},
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            vpc_config={
                "subnet_ids": args.private_subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": public,
                "public_access_cidrs": env.cluster.public_access_cidrs if public else None,
            },
            deletion_protection=env.deletion_protection,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group], protect=env.protect),
        )
        issuer = cluster.identities.apply(lambda ids: ids[0]["oidcs"][0]["issuer"])
        oidc_provider = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child)
        self.oidc = OidcProvider(arn=oidc_provider.arn, url=issuer.apply(lambda u: u.removeprefix("https://")))

        node_role = aws.iam.Role(
            f"{name}-nodes",
            assume_role_policy=_service_trust("ec2.amazonaws.com"),
            managed_policy_arns=[f"{EKS_MANAGED}/AmazonEKSWorkerNodePolicy",
                                 f"{EKS_MANAGED}/AmazonEC2ContainerRegistryReadOnly",
                                 f"{EKS_MANAGED}/AmazonEKS_CNI_Policy"],
            opts=child,
        )
        system = env.cluster.system_pool
        system_group = self._node_group(
            f"{name}-system", cluster, node_role, args.private_subnet_ids, cluster_name,
            instance_types=system.instance_types, min_size=system.min_size, max_size=system.max_size,
            desired=system.min_size, spot=False, gpu=False, disk_gb=50,
            labels={POOL_LABEL: "system", "mlops-platform/node-role": "system"}, taints=[],
        )
        for pool in env.cluster.training_pools:
            self._node_group(
                f"{name}-{pool.name}", cluster, node_role, args.private_subnet_ids, cluster_name,
                instance_types=pool.instance_types, min_size=pool.min_size, max_size=pool.max_size,
                desired=pool.min_size, spot=pool.spot, gpu=pool.gpu, disk_gb=pool.disk_size_gb,
                labels=training_labels(pool), taints=[training_taint(pool)],
            )

        ebs_role = irsa_role(
            f"{name}-ebs-csi", env, self.oidc, "kube-system", "ebs-csi-controller-sa",
            policy=_ebs_csi_policy(), parent=self)
        for addon in ADDONS:
            version = aws.eks.get_addon_version_output(addon_name=addon, kubernetes_version=env.cluster.version,
                                                       most_recent=True)
            aws.eks.Addon(
                f"{name}-{addon}",
                cluster_name=cluster.name,
                addon_name=addon,
                addon_version=version.version,
                resolve_conflicts_on_update="OVERWRITE",
                service_account_role_arn=ebs_role.arn if addon == "aws-ebs-csi-driver" and ebs_role else None,
                # coredns and the CSI controller need nodes to become healthy.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[system_group]),
            )

        self.name = cluster.name
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
            lambda v: kubeconfig_for(v[0], v[1], v[2], env.region)))
        self.vpc_id = pulumi.Output.from_input(args.vpc_id)
        self.private_subnet_ids = pulumi.Output.all(*args.private_subnet_ids)
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.training_pools = pulumi.Output.from_input(
            [{"name": p.name, "gpu": p.gpu, "spot": p.spot, "labels": training_labels(p),
              "taint": {"key": TRAINING_TAINT_KEY, "value": p.name, "effect": "NoSchedule"}}
             for p in env.cluster.training_pools])
        self._system_group = system_group

    def _node_group(self, name: str, cluster: aws.eks.Cluster, node_role: aws.iam.Role,
                    subnet_ids: list[pulumi.Input[str]], cluster_name: str, *, instance_types: list[str],
                    min_size: int, max_size: int, desired: int, spot: bool, gpu: bool, disk_gb: int,
                    labels: dict[str, str], taints: list[dict[str, str]]) -> aws.eks.NodeGroup:
        child = pulumi.ResourceOptions(parent=self)
        template = aws.ec2.LaunchTemplate(
            name,
            # IMDSv2 only, one hop: pods (one hop further) cannot reach the node's credentials.
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                              "http_put_response_hop_limit": 1},
            block_device_mappings=[{"device_name": "/dev/xvda", "ebs": {
                "volume_size": disk_gb, "volume_type": "gp3", "encrypted": "true", "delete_on_termination": "true"}}],
            update_default_version=True,
            opts=child,
        )
        return aws.eks.NodeGroup(
            name,
            cluster_name=cluster.name,
            node_role_arn=node_role.arn,
            subnet_ids=subnet_ids,
            instance_types=instance_types,
            capacity_type="SPOT" if spot else "ON_DEMAND",
            ami_type="AL2023_x86_64_NVIDIA" if gpu else "AL2023_x86_64_STANDARD",
            scaling_config={"min_size": min_size, "max_size": max_size, "desired_size": desired},
            launch_template={"id": template.id, "version": template.latest_version.apply(str)},
            labels=labels,
            taints=taints,
            tags=autoscaler_tags(cluster_name, labels, taints, gpu),
            # The autoscaler owns desired size after creation.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"]),
        )

    def _autoscaler(self, name: str, env: EnvironmentConfig, cluster_name: str) -> None:
        """cluster-autoscaler (Helm) in kube-system, with an IRSA role limited to this cluster's groups."""
        caller = aws.get_caller_identity_output()
        policy = caller.account_id.apply(lambda account: json.dumps(autoscaler_policy(env.region, account, cluster_name)))
        role = irsa_role(f"{name}-autoscaler", env, self.oidc, AUTOSCALER_NAMESPACE, AUTOSCALER_SERVICE_ACCOUNT,
                         policy=policy, parent=self)
        if role is None:
            # Only reached in cluster mode "create", which builds the OIDC provider on AWS.
            raise ValueError(f"{name}: the cluster-autoscaler needs an IRSA role (cluster mode 'create' on AWS)")
        k8s.helm.v3.Release(
            f"{name}-autoscaler",
            name="cluster-autoscaler",
            chart="cluster-autoscaler",
            version=AUTOSCALER_CHART_VERSION,
            namespace=AUTOSCALER_NAMESPACE,
            repository_opts={"repo": "https://kubernetes.github.io/autoscaler"},
            values={
                "cloudProvider": "aws",
                "awsRegion": env.region,
                "autoDiscovery": {"clusterName": cluster_name},
                "image": {"tag": env.cluster.autoscaler_version},
                "rbac": {"serviceAccount": {"name": AUTOSCALER_SERVICE_ACCOUNT,
                                            "annotations": {"eks.amazonaws.com/role-arn": role.arn}}},
                "extraArgs": {"balance-similar-node-groups": True, "skip-nodes-with-system-pods": False,
                              "expander": "least-waste"},
                "nodeSelector": {POOL_LABEL: "system"},
                "resources": {"requests": {"cpu": "100m", "memory": "300Mi"},
                              "limits": {"cpu": "500m", "memory": "600Mi"}},
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "fsGroup": 65534,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containerSecurityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}},
            },
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self._system_group]),
        )


def autoscaler_policy(region: str, account: str, cluster_name: str) -> dict[str, Any]:
    """Describe calls need `*` (read-only); changes only on this account's EKS groups tagged for this cluster."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Describe", "Effect": "Allow", "Resource": "*", "Action": [
            "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
            "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
            "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements"]},
        {"Sid": "DescribeOwnNodegroups", "Effect": "Allow", "Action": "eks:DescribeNodegroup",
         "Resource": f"arn:aws:eks:{region}:{account}:nodegroup/{cluster_name}/*/*"},
        {"Sid": "ScaleOwnGroups", "Effect": "Allow",
         "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
         "Resource": f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/eks-*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}}},
    ]}


def _ebs_csi_policy() -> str:
    """The EBS CSI controller: volumes and snapshots it creates, tagged by the driver."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Describe", "Effect": "Allow", "Resource": "*", "Action": [
            "ec2:DescribeAvailabilityZones", "ec2:DescribeInstances", "ec2:DescribeSnapshots",
            "ec2:DescribeTags", "ec2:DescribeVolumes", "ec2:DescribeVolumesModifications"]},
        {"Sid": "CreateTagged", "Effect": "Allow", "Action": ["ec2:CreateVolume", "ec2:CreateSnapshot"],
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:snapshot/*"],
         "Condition": {"StringLike": {"aws:RequestTag/ebs.csi.aws.com/cluster": "true"}}},
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:snapshot/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": ["CreateVolume", "CreateSnapshot"]}}},
        {"Sid": "AttachVolumes", "Effect": "Allow",
         "Action": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyVolume"],
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:instance/*"]},
        {"Sid": "DeleteOwnVolumes", "Effect": "Allow", "Action": ["ec2:DeleteVolume", "ec2:DeleteSnapshot"],
         "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:snapshot/*"],
         "Condition": {"StringLike": {"aws:ResourceTag/ebs.csi.aws.com/cluster": "true"}}},
    ]})


def _service_trust(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})
