"""Where the environment's Kubernetes workloads run, and the one provider that reaches it.

Modes (cluster.mode):
- `create` (cloud: aws): an EKS cluster (API auth mode with explicit access entries and no implicit
  creator admin, KMS-encrypted secrets, control-plane logs, private endpoint; public only for
  `publicAccessCidrs`, never in prod by default, STANDARD upgrade policy on a version from
  components/eks_versions.py), its IAM OIDC provider for IRSA, the EKS managed add-ons
  (components/addons.py), an on-demand system node group, the training node groups from config
  (scale from zero, spot, GPU AMI, tainted), and the cluster-autoscaler's IRSA role. Everything here
  goes through AWS APIs: the in-cluster services are components/cluster_services.py.
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

from components.access import access_entries
from components.addons import (
    AFTER_NODES,
    BEFORE_NODES,
    CNI_POLICY_ARN,
    EBS_CSI_SERVICE_ACCOUNT,
    VPC_CNI_CONFIGURATION,
    VPC_CNI_SERVICE_ACCOUNT,
    addon,
    ebs_csi_policy,
)
from components.config import EnvironmentConfig, NodePool, Secrets
from components.irsa import OidcProvider, irsa_role

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
TRAINING_TAINT_KEY = "mlops-platform/training"
POOL_LABEL = "mlops-platform/pool"
AUTOSCALER_NAMESPACE = "kube-system"
AUTOSCALER_SERVICE_ACCOUNT = "cluster-autoscaler"
EKS_MANAGED = "arn:aws:iam::aws:policy"
NETWORK_POLICY_ENGINE = "vpc-cni"  # components/addons.py: VPC_CNI_CONFIGURATION


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
    autoscaler_role_arn: pulumi.Output[str] | None  # create mode: for components/cluster_services.py
    # What enforces the NetworkPolicies the environment renders (exported for stacks that attach).
    network_policy_enforcement: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:cluster:Cluster", name, None, opts)
        env = args.env
        self.oidc = None
        self.vpc_id = None
        self.private_subnet_ids = None
        self.security_group_id = None
        self.autoscaler_role_arn = None
        if env.cluster.mode == "create":
            self._create(name, args)
        elif env.cluster.mode == "existing":
            self._existing(name, env, args.secrets.kubeconfig)
        else:
            # No kubeconfig secret: the provider reads ~/.kube/config (or $KUBECONFIG) like kubectl.
            self.kubeconfig = args.secrets.kubeconfig
            self.name = pulumi.Output.from_input(env.cluster.context or "current-context")
            self.training_pools = pulumi.Output.from_input([])
            self.network_policy_enforcement = pulumi.Output.from_input("the cluster's CNI (kubeconfig mode)")
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            context=env.cluster.context if env.cluster.mode == "kubeconfig" else None,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
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
        # The owner stack's cluster enforces (or not) this environment's NetworkPolicies.
        self.network_policy_enforcement = ref.get_output("network_policy_enforcement").apply(
            lambda v: _owner_enforces(env.cluster.stack_reference or "", v))

    # --- create ---------------------------------------------------------------------------

    def _create(self, name: str, args: ClusterArgs) -> None:
        env = args.env
        if args.vpc_id is None or not args.private_subnet_ids:
            raise ValueError("cluster.mode 'create' needs the network's VPC and private subnets")
        child = pulumi.ResourceOptions(parent=self)
        cluster_name = f"mlops-{env.name}"
        cluster = self._control_plane(name, args, cluster_name)
        issuer = cluster.identities.apply(lambda ids: ids[0]["oidcs"][0]["issuer"])
        oidc_provider = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=issuer, client_id_lists=["sts.amazonaws.com"], opts=child)
        self.oidc = OidcProvider(arn=oidc_provider.arn, url=issuer.apply(lambda u: u.removeprefix("https://")))
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        access_entries(self, f"{name}-access", cluster.name, env.deploy, account, depends_on=[cluster])

        # The CNI's AWS permissions through IRSA, not the node role (every pod on a node could use those).
        cni_role = irsa_role(f"{name}-vpc-cni", env, self.oidc, *VPC_CNI_SERVICE_ACCOUNT, policy=None,
                             parent=self, managed_policy_arns=[CNI_POLICY_ARN])
        networking = [addon(self, name, cluster.name, a, env.cluster.version,
                            role_arn=cni_role.arn if a == "vpc-cni" and cni_role else None,
                            configuration=VPC_CNI_CONFIGURATION if a == "vpc-cni" else None)
                      for a in BEFORE_NODES]
        groups = self._node_groups(name, args, cluster, cluster_name, networking)
        ebs_role = irsa_role(f"{name}-ebs-csi", env, self.oidc, *EBS_CSI_SERVICE_ACCOUNT,
                             policy=ebs_csi_policy(), parent=self)
        for a in AFTER_NODES:
            addon(self, name, cluster.name, a, env.cluster.version,
                  role_arn=ebs_role.arn if a == "aws-ebs-csi-driver" and ebs_role else None, depends_on=groups)
        self._autoscaler_role(name, env, cluster_name, account)

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
        self.network_policy_enforcement = pulumi.Output.from_input(NETWORK_POLICY_ENGINE)

    def _control_plane(self, name: str, args: ClusterArgs, cluster_name: str) -> aws.eks.Cluster:
        """The EKS control plane: private endpoint, explicit access, envelope-encrypted Secrets, audit logs."""
        env = args.env
        child = pulumi.ResourceOptions(parent=self)
        # What holds or decrypts prod data (Secrets, audit logs) is protected and retained like the data.
        keep = pulumi.ResourceOptions(parent=self, protect=env.protect, retain_on_delete=env.retain_on_delete)

        secrets_key = aws.kms.Key(f"{name}-secrets-key", description=f"EKS {cluster_name}: envelope encryption of Secrets",
                                  enable_key_rotation=True, deletion_window_in_days=30 if env.protect else 7,
                                  opts=keep)
        log_group = aws.cloudwatch.LogGroup(f"{name}-logs", name=f"/aws/eks/{cluster_name}/cluster",
                                            retention_in_days=env.log_retention_days, opts=keep)
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
            # No implicit, unmanaged admin for whoever ran the first `up`: components/access.py lists every principal.
            access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": False},
            # STANDARD: never drift into paid extended support; the config refuses versions past standard support.
            upgrade_policy={"support_type": "STANDARD"},
            encryption_config={"resources": ["secrets"], "provider": {"key_arn": secrets_key.arn}},
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            vpc_config={
                "subnet_ids": args.private_subnet_ids,
                "endpoint_private_access": True,
                "endpoint_public_access": public,
                "public_access_cidrs": env.cluster.public_access_cidrs if public else None,
            },
            deletion_protection=env.deletion_protection,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group], protect=env.protect,
                                        retain_on_delete=env.retain_on_delete),
        )
        return cluster

    def _node_groups(self, name: str, args: ClusterArgs, cluster: aws.eks.Cluster, cluster_name: str,
                     networking: list[aws.eks.Addon]) -> list[aws.eks.NodeGroup]:
        """The system pool and every training pool; nodes join once the CNI add-ons exist."""
        env = args.env
        node_role = aws.iam.Role(
            f"{name}-nodes",
            assume_role_policy=_service_trust("ec2.amazonaws.com"),
            managed_policy_arns=[f"{EKS_MANAGED}/AmazonEKSWorkerNodePolicy",
                                 f"{EKS_MANAGED}/AmazonEC2ContainerRegistryReadOnly"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        system = env.cluster.system_pool
        groups = [self._node_group(
            f"{name}-system", cluster, node_role, args.private_subnet_ids or [], cluster_name, networking,
            instance_types=system.instance_types, min_size=system.min_size, max_size=system.max_size,
            desired=system.min_size, spot=False, gpu=False, disk_gb=50,
            labels={POOL_LABEL: "system", "mlops-platform/node-role": "system"}, taints=[],
        )]
        for pool in env.cluster.training_pools:
            groups.append(self._node_group(
                f"{name}-{pool.name}", cluster, node_role, args.private_subnet_ids or [], cluster_name, networking,
                instance_types=pool.instance_types, min_size=pool.min_size, max_size=pool.max_size,
                desired=pool.min_size, spot=pool.spot, gpu=pool.gpu, disk_gb=pool.disk_size_gb,
                labels=training_labels(pool), taints=[training_taint(pool)],
            ))
        return groups

    def _node_group(self, name: str, cluster: aws.eks.Cluster, node_role: aws.iam.Role,
                    subnet_ids: list[pulumi.Input[str]], cluster_name: str, networking: list[aws.eks.Addon], *,
                    instance_types: list[str], min_size: int, max_size: int, desired: int, spot: bool, gpu: bool,
                    disk_gb: int, labels: dict[str, str], taints: list[dict[str, str]]) -> aws.eks.NodeGroup:
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
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["scalingConfig.desiredSize"],
                                        depends_on=networking),
        )

    def _autoscaler_role(self, name: str, env: EnvironmentConfig, cluster_name: str,
                         account: pulumi.Output[str]) -> None:
        """The cluster-autoscaler's IRSA role, limited to this cluster's groups (its Helm release: cluster_services)."""
        policy = account.apply(lambda a: json.dumps(autoscaler_policy(env.region, a, cluster_name)))
        role = irsa_role(f"{name}-autoscaler", env, self.oidc, AUTOSCALER_NAMESPACE, AUTOSCALER_SERVICE_ACCOUNT,
                         policy=policy, parent=self)
        if role is None:
            # Only reached in cluster mode "create", which builds the OIDC provider on AWS.
            raise ValueError(f"{name}: the cluster-autoscaler needs an IRSA role (cluster mode 'create' on AWS)")
        self.autoscaler_role_arn = role.arn


def _owner_enforces(stack_reference: str, value: Any) -> str:
    """An attached environment's NetworkPolicies are only as good as the owner cluster's enforcement."""
    if value is None:
        # An owner stack deployed before this output existed: say so, the next owner deploy exports it.
        pulumi.log.warn(f"cluster.stackReference {stack_reference!r} does not export network_policy_enforcement; "
                        "redeploy it so this environment's NetworkPolicies are known to be enforced")
        return "unverified"
    if value != NETWORK_POLICY_ENGINE:
        raise ValueError(f"cluster.stackReference {stack_reference!r} exports network_policy_enforcement "
                         f"{value!r}, not {NETWORK_POLICY_ENGINE!r}: deploy the owner stack first (README \"Deploy\")")
    return str(value)


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


def _service_trust(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})
