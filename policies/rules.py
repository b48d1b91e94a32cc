"""The platform's promises as policy validators: plain functions over a resource's inputs.

Each validator takes pulumi-policy's arguments (`args.resource_type`, `args.props`, `args.urn`,
`args.opts`, `args.provider`; stack policies `args.resources`) and calls `report(message)`
once per problem. `policies/__main__.py` wraps them in a PolicyPack for
`pulumi preview --policy-pack policies`; `policies/offline.py` runs them over a render.

Prod is recognized from the stack name in the URN (`prod`, or `prod-*`), so the same pack
serves every stack without per-stack configuration.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from components import eks_versions

Report = Callable[..., None]

REQUIRED_TAGS = ("owner", "cost-center", "environment")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# Removing these loses data: in prod they must carry Pulumi's `protect`.
STATEFUL_TYPES = {"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2", "aws:rds/instance:Instance",
                  "aws:rds/cluster:Cluster", "aws:eks/cluster:Cluster", "aws:efs/fileSystem:FileSystem",
                  "aws:dynamodb/table:Table", "kubernetes:apps/v1:StatefulSet",
                  "kubernetes:core/v1:PersistentVolumeClaim"}
BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
IAM_POLICY_TYPES = {"aws:iam/policy:Policy", "aws:iam/rolePolicy:RolePolicy", "aws:iam/userPolicy:UserPolicy",
                    "aws:iam/groupPolicy:GroupPolicy"}
READ_ONLY_ACTION = re.compile(r"^[a-z0-9-]+:(Describe|List|Get)[A-Za-z0-9]*$")


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    validate: Callable[[Any, Report], None]
    scope: str  # "resource" or "stack"


def stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type>::<name>` -> `<stack>`."""
    return urn.split("::", 1)[0].removeprefix("urn:pulumi:")


def is_prod(urn: str) -> bool:
    return re.fullmatch(r"prod(-[a-z0-9-]+)?", stack_of(urn)) is not None


def is_prod_shaped(urn: str) -> bool:
    """prod and staging (staging is held to prod's shape)."""
    return is_prod(urn) or re.fullmatch(r"staging(-[a-z0-9-]+)?", stack_of(urn)) is not None


def _truthy(value: Any) -> bool:
    return value is True or value == "true"


# --- buckets (a stack policy: S3 settings are separate resources that reference the bucket) ---

def _attached(bucket: Any, resources: Iterable[Any], type_prefix: str) -> list[Any]:
    """Resources of a type that depend on the bucket (they take `bucket=bucket.id`)."""
    return [r for r in resources if r.resource_type.startswith(type_prefix)
            and any(d.urn == bucket.urn for d in (r.dependencies or []))]


def _buckets(args: Any) -> list[Any]:
    return [r for r in args.resources if r.resource_type in BUCKET_TYPES]


def bucket_encrypted(args: Any, report: Report) -> None:
    for bucket in _buckets(args):
        inline = bucket.props.get("serverSideEncryptionConfiguration")
        configs = [r.props for r in _attached(bucket, args.resources,
                                              "aws:s3/bucketServerSideEncryptionConfiguration")]
        algorithms = [rule.get("applyServerSideEncryptionByDefault", {}).get("sseAlgorithm")
                      for c in configs + ([inline] if inline else []) for rule in _as_list(c.get("rules", c.get("rule")))]
        if not any(a in ("aws:kms", "aws:kms:dsse", "AES256") for a in algorithms):
            report(f"bucket {bucket.name}: no default server-side encryption (add a "
                   "BucketServerSideEncryptionConfiguration with aws:kms)")


def bucket_versioned(args: Any, report: Report) -> None:
    for bucket in _buckets(args):
        statuses = [(r.props.get("versioningConfiguration") or {}).get("status")
                    for r in _attached(bucket, args.resources, "aws:s3/bucketVersioning")]
        inline = (bucket.props.get("versioning") or {}).get("enabled")
        if "Enabled" not in statuses and not _truthy(inline):
            report(f"bucket {bucket.name}: versioning is not enabled (add a BucketVersioning with status Enabled)")


def bucket_private(args: Any, report: Report) -> None:
    keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for bucket in _buckets(args):
        blocks = _attached(bucket, args.resources, "aws:s3/bucketPublicAccessBlock")
        if not any(all(_truthy(b.props.get(k)) for k in keys) for b in blocks):
            report(f"bucket {bucket.name}: needs a BucketPublicAccessBlock with all four blocks true")
        if bucket.props.get("acl") not in (None, "private"):
            report(f"bucket {bucket.name}: acl {bucket.props.get('acl')!r} is not private")


def bucket_tls_only(args: Any, report: Report) -> None:
    for bucket in _buckets(args):
        policies = [r.props.get("policy") for r in _attached(bucket, args.resources, "aws:s3/bucketPolicy")]
        if not any(_denies_plain_http(p) for p in policies):
            report(f"bucket {bucket.name}: no bucket policy denying requests with aws:SecureTransport false")


def _denies_plain_http(policy: Any) -> bool:
    doc = _document(policy)
    for statement in _as_list(doc.get("Statement")):
        condition = statement.get("Condition", {}).get("Bool", {})
        if statement.get("Effect") == "Deny" and str(condition.get("aws:SecureTransport")).lower() == "false":
            return True
    return False


# --- cluster and database ---------------------------------------------------------------

def eks_private_in_prod(args: Any, report: Report) -> None:
    if args.resource_type != "aws:eks/cluster:Cluster" or not is_prod(args.urn):
        return
    if (args.props.get("vpcConfig") or {}).get("endpointPublicAccess") is not False:
        report("prod EKS cluster: the API endpoint must be private (vpcConfig.endpointPublicAccess: false)")


def rds_encrypted_and_protected(args: Any, report: Report) -> None:
    if args.resource_type not in ("aws:rds/instance:Instance", "aws:rds/cluster:Cluster"):
        return
    if not _truthy(args.props.get("storageEncrypted")):
        report("RDS storage must be encrypted (storageEncrypted: true)")
    if is_prod(args.urn) and not _truthy(args.props.get("deletionProtection")):
        report("prod RDS needs deletionProtection: true")


def stateful_protected_in_prod(args: Any, report: Report) -> None:
    if args.resource_type in STATEFUL_TYPES and is_prod(args.urn) and not args.opts.protect:
        report(f"prod {args.resource_type.rsplit(':', 1)[1]} {args.name} must be protected (protect=True)")


# Hold or decrypt prod data besides the stateful types: keys, logs, images, and every bucket setting.
PROD_KEPT_TYPES = {"aws:kms/key:Key", "aws:cloudwatch/logGroup:LogGroup", "aws:ecr/repository:Repository"} | {
    f"aws:s3/{t}" for t in ("bucketVersioning:BucketVersioning", "bucketPolicy:BucketPolicy",
                            "bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                            "bucketPublicAccessBlock:BucketPublicAccessBlock", "bucketLogging:BucketLogging",
                            "bucketOwnershipControls:BucketOwnershipControls",
                            "bucketLifecycleConfiguration:BucketLifecycleConfiguration")}


def prod_keys_and_logs_protected(args: Any, report: Report) -> None:
    if args.resource_type in PROD_KEPT_TYPES and is_prod(args.urn) and not args.opts.protect:
        report(f"prod {args.resource_type.rsplit(':', 1)[1]} {args.name} holds or decrypts prod data: "
               "protect (and retain) it like the data")


def rds_enhanced_monitoring_in_prod(args: Any, report: Report) -> None:
    if args.resource_type == "aws:rds/instance:Instance" and is_prod(args.urn):
        if not args.props.get("monitoringInterval") or not args.props.get("monitoringRoleArn"):
            report("prod RDS needs enhanced monitoring (monitoringInterval > 0 and a monitoringRoleArn)")


# --- EKS: a supported version, explicit access, enforced network policies ----------------

def eks_supported_version(args: Any, report: Report) -> None:
    """The version is in EKS standard support today (components/eks_versions.py), on the STANDARD policy."""
    if args.resource_type != "aws:eks/cluster:Cluster":
        return
    problem = eks_versions.support_problem(str(args.props.get("version")), date.today())
    if problem:
        report(f"EKS version {args.props.get('version')!r} {problem}")
    if (args.props.get("upgradePolicy") or {}).get("supportType") != "STANDARD":
        report("EKS upgradePolicy.supportType must be STANDARD (no silent, paid extended support)")


def eks_explicit_access(args: Any, report: Report) -> None:
    if args.resource_type != "aws:eks/cluster:Cluster":
        return
    access = args.props.get("accessConfig") or {}
    if access.get("authenticationMode") != "API" or access.get("bootstrapClusterCreatorAdminPermissions") is not False:
        report("EKS access must be explicit: authenticationMode API and bootstrapClusterCreatorAdminPermissions "
               "false (access entries in the stack, no permanent creator admin)")


def network_policies_enforced(args: Any, report: Report) -> None:
    """NetworkPolicies on a cluster the stack creates are enforced: the VPC CNI's network policy agent is on."""
    policies = [r for r in args.resources if r.resource_type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"]
    if not policies or not any(r.resource_type == "aws:eks/cluster:Cluster" for r in args.resources):
        return
    for addon in (r for r in args.resources if r.resource_type == "aws:eks/addon:Addon"):
        if addon.props.get("addonName") == "vpc-cni":
            values = _document(addon.props.get("configurationValues"))
            if str(values.get("enableNetworkPolicy")).lower() == "true":
                return
    report(f"{len(policies)} NetworkPolicies but nothing enforces them: the vpc-cni add-on needs "
           "configurationValues {\"enableNetworkPolicy\": \"true\"}")


def ecr_immutable_scanned_encrypted(args: Any, report: Report) -> None:
    if args.resource_type != "aws:ecr/repository:Repository":
        return
    if args.props.get("imageTagMutability") != "IMMUTABLE":
        report(f"ECR {args.name}: tags must be IMMUTABLE (a deployed tag always names the same image)")
    if not _truthy((args.props.get("imageScanningConfiguration") or {}).get("scanOnPush")):
        report(f"ECR {args.name}: scanOnPush must be on")
    if not any(c.get("encryptionType") == "KMS" for c in _as_list(args.props.get("encryptionConfigurations"))):
        report(f"ECR {args.name}: images must be encrypted with KMS")


def s3_access_logging(args: Any, report: Report) -> None:
    """In prod and staging every bucket's access is logged (the log bucket is a logging target itself)."""
    for bucket in _buckets(args):
        if is_prod_shaped(bucket.urn) and not _attached(bucket, args.resources, "aws:s3/bucketLogging"):
            report(f"bucket {bucket.name}: no S3 server access logging (add a BucketLogging to the log bucket)")


# --- containers -------------------------------------------------------------------------

def containers_hardened(args: Any, report: Report) -> None:
    """Non-root, CPU and memory limits, and a pinned image for every container of a workload."""
    if not args.resource_type.startswith("kubernetes:") or args.resource_type.rsplit(":", 1)[1] not in WORKLOAD_KINDS:
        return
    pod = _pod_spec(args.resource_type.rsplit(":", 1)[1], args.props)
    pod_non_root = _truthy((pod.get("securityContext") or {}).get("runAsNonRoot"))
    for c in _as_list(pod.get("initContainers")) + _as_list(pod.get("containers")):
        name = c.get("name", "?")
        ctx = c.get("securityContext") or {}
        if not (_truthy(ctx.get("runAsNonRoot")) or pod_non_root) or ctx.get("runAsUser") == 0:
            report(f"container {name}: must run as non-root (runAsNonRoot: true)")
        limits = (c.get("resources") or {}).get("limits") or {}
        if not {"cpu", "memory"} <= set(limits):
            report(f"container {name}: needs cpu and memory limits")
        if not is_pinned(str(c.get("image", ""))):
            report(f"container {name}: image {c.get('image')!r} is not pinned to a version tag or digest")


def is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def _pod_spec(kind: str, props: Mapping[str, Any]) -> dict[str, Any]:
    spec = props.get("spec") or {}
    if kind == "Pod":
        return dict(spec)
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return dict((spec.get("template") or {}).get("spec") or {})


# --- tags and IAM -----------------------------------------------------------------------

def required_tags(args: Any, report: Report) -> None:
    """Every AWS resource carries owner, cost-center and environment: its provider's default tags or its own."""
    if args.resource_type.startswith("pulumi:providers:") or not args.resource_type.startswith("aws:"):
        return
    provider_tags: dict[str, Any] = {}
    if args.provider is not None:
        # Provider inputs arrive JSON-encoded on the wire.
        provider_tags = _document((args.provider.props or {}).get("defaultTags")).get("tags") or {}
    tags = {**provider_tags, **_tag_map(args.props.get("tags"))}
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    if missing:
        report(f"{args.name}: missing required tags {missing} (set them in the provider's defaultTags)")


def _tag_map(tags: Any) -> dict[str, Any]:
    """Tags as a map; Auto Scaling groups list them as `{key, value, propagateAtLaunch}`
    (and provider default tags do not reach them, so they must carry their own)."""
    if isinstance(tags, list):
        return {str(t.get("key")): t.get("value") for t in tags if isinstance(t, dict)}
    return dict(tags or {})


def iam_no_write_on_star(args: Any, report: Report) -> None:
    if args.resource_type not in IAM_POLICY_TYPES:
        return
    for statement in _as_list(_document(args.props.get("policy")).get("Statement")):
        if statement.get("Effect") != "Allow":
            continue
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        wildcards = [a for a in actions if a == "*" or a.endswith(":*")]
        if wildcards:
            report(f"{args.name}: wildcard actions {wildcards}")
        if "*" in resources:
            writes = [a for a in actions if not READ_ONLY_ACTION.match(a)]
            if writes:
                report(f"{args.name}: write actions {writes} on Resource '*'")


def _document(policy: Any) -> dict[str, Any]:
    if isinstance(policy, str):
        try:
            return json.loads(policy)
        except json.JSONDecodeError:
            return {}
    return dict(policy or {})


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


RULES: list[Rule] = [
    Rule("s3-bucket-encrypted", "S3 buckets have default server-side encryption (KMS).", bucket_encrypted, "stack"),
    Rule("s3-bucket-versioned", "S3 buckets are versioned.", bucket_versioned, "stack"),
    Rule("s3-bucket-private", "S3 buckets block all public access.", bucket_private, "stack"),
    Rule("s3-bucket-tls-only", "S3 bucket policies deny requests without TLS.", bucket_tls_only, "stack"),
    Rule("eks-no-public-endpoint-in-prod", "Prod EKS API endpoints are private.", eks_private_in_prod, "resource"),
    Rule("rds-encrypted-deletion-protected", "RDS is encrypted; prod RDS has deletion protection.",
         rds_encrypted_and_protected, "resource"),
    Rule("prod-stateful-protected", "Stateful prod resources are protected from deletion.",
         stateful_protected_in_prod, "resource"),
    Rule("containers-non-root-limits-pinned", "Containers run as non-root, with limits, from pinned images.",
         containers_hardened, "resource"),
    Rule("aws-required-tags", "AWS resources carry owner, cost-center and environment tags.",
         required_tags, "resource"),
    Rule("iam-no-write-on-star", "No IAM statement grants write actions on Resource '*' or wildcard actions.",
         iam_no_write_on_star, "resource"),
    Rule("network-policies-enforced", "NetworkPolicies on a cluster the stack creates are enforced (VPC CNI).",
         network_policies_enforced, "stack"),
    Rule("eks-supported-version", "EKS runs a version in standard support, on the STANDARD upgrade policy.",
         eks_supported_version, "resource"),
    Rule("eks-explicit-access", "EKS access is by access entries only; no permanent creator admin.",
         eks_explicit_access, "resource"),
    Rule("prod-keys-and-logs-protected", "Prod keys, logs, images and bucket settings are protected like the data.",
         prod_keys_and_logs_protected, "resource"),
    Rule("rds-enhanced-monitoring-in-prod", "Prod RDS has enhanced monitoring.", rds_enhanced_monitoring_in_prod,
         "resource"),
    Rule("ecr-immutable-scanned-encrypted", "ECR repositories have immutable tags, scan on push, KMS encryption.",
         ecr_immutable_scanned_encrypted, "resource"),
    Rule("s3-access-logging", "Prod and staging buckets log access to a log bucket.", s3_access_logging, "stack"),
]
