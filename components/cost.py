"""Monthly cost of a rendered environment from a dated price table: `mlops plan STACK --cost`.

`estimate(result)` is a pure function over what components/render.py registered: each billable
AWS resource is priced from its own rendered inputs (node groups at min and max size, EKS control
plane by support status, NAT gateways, RDS class and storage, KMS keys, volume claims, load
balancers where rendered, S3 at the size `budget.assumedS3Gb` assumes). Usage-based charges are
named, not priced. Anything the price table lacks is a PriceError, never a silent $0.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from components.prices import PriceError, PriceTable
from components.render import RenderedResource, RenderResult

BUDGET_COMPONENT = "mlops:budget:Budget"
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
# AWS resources not billed by themselves (what they carry is priced elsewhere). Budgets without
# actions are free; SNS's first million publishes a month are free.
FREE = {f"aws:{t}" for t in (
    "ec2/vpc:Vpc ec2/subnet:Subnet ec2/routeTable:RouteTable ec2/routeTableAssociation:RouteTableAssociation "
    "ec2/internetGateway:InternetGateway ec2/securityGroup:SecurityGroup ec2/defaultSecurityGroup:DefaultSecurityGroup "
    "ec2/securityGroupRule:SecurityGroupRule ec2/launchTemplate:LaunchTemplate ec2/flowLog:FlowLog eks/addon:Addon "
    "eks/accessEntry:AccessEntry eks/accessPolicyAssociation:AccessPolicyAssociation iam/role:Role "
    "iam/rolePolicy:RolePolicy iam/policy:Policy iam/rolePolicyAttachment:RolePolicyAttachment "
    "iam/openIdConnectProvider:OpenIdConnectProvider kms/alias:Alias rds/subnetGroup:SubnetGroup "
    "rds/parameterGroup:ParameterGroup s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration "
    "s3/bucketOwnershipControls:BucketOwnershipControls s3/bucketPolicy:BucketPolicy "
    "s3/bucketPublicAccessBlock:BucketPublicAccessBlock s3/bucketVersioning:BucketVersioning "
    "s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration "
    "budgets/budget:Budget sns/topic:Topic sns/topicPolicy:TopicPolicy").split()}


@dataclass(frozen=True)
class CostLine:
    resource: str
    type: str
    basis: str  # what was priced and at what unit price, so a reader can check the figure
    monthly_min: float
    monthly_max: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CostReport:
    stack: str
    region: str | None
    table_file: str
    as_of: date
    sources: dict[str, str]
    lines: list[CostLine] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    not_priced: list[str] = field(default_factory=list)
    budget_usd: float | None = None

    @property
    def total_min(self) -> float:
        return round(sum(line.monthly_min for line in self.lines), 2)

    @property
    def total_max(self) -> float:
        return round(sum(line.monthly_max for line in self.lines), 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack, "region": self.region, "currency": "USD",
            "price_table": {"file": self.table_file, "as_of": self.as_of.isoformat(), "sources": self.sources},
            "lines": [line.to_json() for line in self.lines],
            "total": {"monthly_min": self.total_min, "monthly_max": self.total_max},
            "budget": {"monthly_usd": self.budget_usd} if self.budget_usd is not None else None,
            "assumptions": list(self.assumptions), "not_priced": list(self.not_priced),
        }

    def table(self) -> RenderableType:
        table = Table(title=f"monthly cost estimate: {self.stack} ({self.region or 'no AWS region'})",
                      show_edge=False, show_footer=True)
        table.add_column("resource", footer="total")
        table.add_column("priced as")
        table.add_column("min $/month", justify="right", footer=_usd(self.total_min))
        table.add_column("max $/month", justify="right", footer=_usd(self.total_max))
        for line in self.lines:
            table.add_row(line.resource, line.basis, _usd(line.monthly_min), _usd(line.monthly_max))
        notes = [f"prices: {self.table_file}, list prices as of {self.as_of.isoformat()} (sources in the file)"]
        if self.budget_usd is not None:
            over = ("even the minimum is above it: it will alert every month" if self.total_min > self.budget_usd
                    else "the maximum is above it" if self.total_max > self.budget_usd else "both ends fit")
            notes.append(f"budget: {_usd(self.budget_usd)}/month (budget.monthlyUsd); {over}")
        notes += [f"assumed: {a}" for a in self.assumptions]
        notes += [f"not priced: {n}" for n in self.not_priced]
        return Group(table, Text("\n".join(notes), style="dim"))


def estimate(result: RenderResult, table: PriceTable | None = None) -> CostReport:
    """Price every billable resource in `result`; raises PriceError for anything the table lacks."""
    table = table or PriceTable.load()
    providers = result.of_type("pulumi:providers:aws")
    region = str(providers[0].inputs.get("region") or "us-east-1") if providers else None
    report = CostReport(stack=result.stack, region=region, table_file=table.path.name, as_of=table.as_of,
                        sources=table.sources)
    if region is None:
        report.assumptions.append("cloud: none: nothing here is billed by AWS; the cluster and its volumes "
                                  "cost whatever the cluster you point it at costs")
        return report
    ctx = _Context(result, table, table.region(region), report, table.hours_per_month)
    for resource in result.resources:
        if not resource.custom or resource.type.startswith(("pulumi:", "random:")) or resource.type in FREE:
            continue
        pricer = _PRICERS.get(resource.type)
        if pricer is not None:
            pricer(resource, ctx)
        elif resource.type.startswith("aws:"):
            ctx.note(f"{resource.name} ({resource.type}): no pricing rule in components/cost.py")
    _price_buckets(ctx)
    report.lines.sort(key=lambda line: line.resource)  # stable order: a diff shows changes, not shuffles
    report.not_priced.sort()
    budgets = result.of_type("aws:budgets/budget:Budget")
    report.budget_usd = float(budgets[0].inputs["limitAmount"]) if budgets else None
    if not result.of_type("aws:eks/cluster:Cluster") and result.of_type("pulumi:providers:kubernetes"):
        report.assumptions.append("the cluster belongs to another stack (cluster.mode existing): its nodes and "
                                  "control plane are priced there; this environment's pods use their capacity")
    return report


@dataclass
class _Context:
    result: RenderResult
    table: PriceTable
    prices: dict[str, Any]
    report: CostReport
    hours: float

    def add(self, resource: RenderedResource, basis: str, monthly_min: float, monthly_max: float | None = None,
            name: str | None = None) -> None:
        high = monthly_min if monthly_max is None else monthly_max
        self.report.lines.append(CostLine(name or resource.name, resource.type, basis,
                                          round(monthly_min, 2), round(high, 2)))

    def note(self, text: str) -> None:
        if text not in self.report.not_priced:
            self.report.not_priced.append(text)

    def assume(self, text: str) -> None:
        if text not in self.report.assumptions:
            self.report.assumptions.append(text)

    def price(self, key: str, resource: RenderedResource) -> Any:
        if key not in self.prices:
            raise PriceError(f"{resource.name}: {self.table.path.name} has no {key!r} price for {self.report.region}")
        return self.prices[key]


def _eks_cluster(r: RenderedResource, ctx: _Context) -> None:
    version = str(r.inputs.get("version"))
    ends = ctx.table.eks["end_of_standard_support"]
    if version not in ends:
        raise PriceError(f"{r.name}: Kubernetes version {version!r} is not in the EKS support calendar of "
                         f"{ctx.table.path.name} (it has {sorted(ends)}); add its end of standard support")
    end = ends[version]  # past it, AWS bills the extended-support rate (or upgrades the cluster)
    extended = ctx.table.as_of > end
    rate = ctx.table.eks["extended_hourly" if extended else "standard_hourly"]
    status = f"extended support (standard ended {end})" if extended else "standard support"
    ctx.add(r, f"EKS control plane, {version} in {status} @ ${rate}/h", rate * ctx.hours)


def _node_group(r: RenderedResource, ctx: _Context) -> None:
    types = [str(t) for t in r.inputs.get("instanceTypes") or []]
    spot = r.inputs.get("capacityType") == "SPOT"
    rates = [_ec2_rate(r, t, "spot" if spot else "on_demand", ctx) for t in types]
    if not rates:
        raise PriceError(f"{r.name}: node group without instanceTypes; cannot price it")
    scaling = r.inputs.get("scalingConfig") or {}
    low, high = int(scaling.get("minSize", 0)), int(scaling.get("maxSize", 0))
    rate_text = f"${min(rates)}" if min(rates) == max(rates) else f"${min(rates)}-{max(rates)}"
    # Cheapest type at min size, dearest at max: the range the autoscaler can land in.
    ctx.add(r, f"{low}-{high} x {'/'.join(types)} {'spot (assumed price)' if spot else 'on-demand'} "
               f"@ {rate_text}/h", low * min(rates) * ctx.hours, high * max(rates) * ctx.hours)
    if spot:
        ctx.assume("spot prices: an approximate price per instance type from the price table, not measured")
    disk = _node_disk_gb(r, ctx)
    gp3 = ctx.price("ebs_gp3_gb_month", r)
    ctx.add(r, f"{low}-{high} x {disk:g} GB gp3 root volumes @ ${gp3}/GB-month",
            low * disk * gp3, high * disk * gp3, name=f"{r.name} volumes")


def _ec2_rate(r: RenderedResource, instance_type: str, key: str, ctx: _Context) -> float:
    entry = ctx.prices.get("ec2", {}).get(instance_type)
    if entry is None or key not in entry:
        label = "spot" if key == "spot" else "on-demand"
        raise PriceError(f"{r.name}: no {label} price for instance type {instance_type!r} in {ctx.report.region} "
                         f"in {ctx.table.path.name}; add it to the price table")
    return float(entry[key])


def _node_disk_gb(r: RenderedResource, ctx: _Context) -> float:
    template = r.inputs.get("launchTemplate")
    if not template:
        return float(r.inputs.get("diskSize") or 20)  # EKS managed node groups default to 20 GB
    # Under the renderer a resource's id is `<name>-id`; the node group names its template by id.
    found = [lt for lt in ctx.result.of_type("aws:ec2/launchTemplate:LaunchTemplate")
             if f"{lt.name}-id" == template.get("id") or lt.name == template.get("name")]
    mappings = (found[0].inputs.get("blockDeviceMappings") or []) if found else []
    sizes = [float((m.get("ebs") or {}).get("volumeSize") or 0) for m in mappings]
    if not sizes or not all(sizes):
        raise PriceError(f"{r.name}: cannot find the root volume size in its launch template {template}")
    return sum(sizes)


def _rds_instance(r: RenderedResource, ctx: _Context) -> None:
    klass = str(r.inputs.get("instanceClass"))
    if r.inputs.get("engine") not in ("postgres", None):
        raise PriceError(f"{r.name}: engine {r.inputs.get('engine')!r} is not priced; the table has RDS for PostgreSQL")
    multi = bool(r.inputs.get("multiAz"))
    az = "multi_az" if multi else "single_az"
    entry = ctx.prices.get("rds_postgres", {}).get(klass)
    if entry is None:
        raise PriceError(f"{r.name}: no RDS for PostgreSQL price for instance class {klass!r} in "
                         f"{ctx.report.region} in {ctx.table.path.name}; add it to the price table")
    deployment = "Multi-AZ" if multi else "Single-AZ"
    ctx.add(r, f"RDS PostgreSQL {klass} {deployment} @ ${entry[az]}/h", entry[az] * ctx.hours)
    storage_type = str(r.inputs.get("storageType") or "gp2")
    if storage_type not in ("gp2", "gp3"):
        raise PriceError(f"{r.name}: storageType {storage_type!r} is not priced (gp2/gp3 are)")
    per_gb = ctx.price("rds_gp3_gb_month", r)[az]
    low = float(r.inputs.get("allocatedStorage") or 0)
    high = float(r.inputs.get("maxAllocatedStorage") or low)  # storage autoscaling ceiling
    ctx.add(r, f"{low:g}-{high:g} GB {storage_type} {deployment} @ ${per_gb}/GB-month",
            low * per_gb, high * per_gb, name=f"{r.name} storage")
    ctx.note("RDS backup storage beyond the database's size, and Performance Insights beyond 7 days")


def _nat_gateway(r: RenderedResource, ctx: _Context) -> None:
    rate = ctx.price("nat_gateway_hourly", r)
    ctx.add(r, f"NAT gateway @ ${rate}/h", rate * ctx.hours)
    ctx.note(f"NAT gateway data processed (${ctx.price('nat_gateway_gb', r)}/GB) and data transfer out")


def _elastic_ip(r: RenderedResource, ctx: _Context) -> None:
    rate = ctx.price("public_ipv4_hourly", r)  # every public IPv4 address is billed, attached or not
    ctx.add(r, f"public IPv4 address @ ${rate}/h", rate * ctx.hours, name=f"{r.name} address")


def _kms_key(r: RenderedResource, ctx: _Context) -> None:
    ctx.add(r, f"KMS customer managed key @ ${ctx.price('kms_key_month', r):g}/month", ctx.price("kms_key_month", r))
    ctx.note("KMS requests ($0.03 per 10,000 beyond the free tier)")


def _log_group(r: RenderedResource, ctx: _Context) -> None:
    ctx.note(f"CloudWatch Logs volume (${ctx.price('cloudwatch_logs_ingest_gb', r)}/GB ingested, "
             f"${ctx.price('cloudwatch_logs_store_gb_month', r)}/GB-month stored): control-plane and flow logs")


def _price_buckets(ctx: _Context) -> None:
    buckets = sorted((b for t in BUCKETS for b in ctx.result.of_type(t)), key=lambda b: b.name)  # render order varies
    if not buckets:
        return
    components = ctx.result.of_type(BUDGET_COMPONENT)
    gb = float(components[0].inputs.get("assumedS3Gb") or 0) if components else 0.0
    rate = ctx.price("s3_standard_gb_month", buckets[0])
    ctx.add(buckets[0], f"{gb:g} GB S3 Standard, all versions, in {', '.join(b.name for b in buckets)} "
                        f"@ ${rate}/GB-month", gb * rate, name=f"s3 buckets ({len(buckets)})")
    ctx.assume(f"S3 holds {gb:g} GB (budget.assumedS3Gb): bucket contents are data, not configuration")
    ctx.note("S3 requests and data transfer out")


def _volume_claims(r: RenderedResource, ctx: _Context) -> None:
    """PersistentVolumeClaims (and StatefulSet claim templates) on an AWS cluster are EBS volumes."""
    spec = r.inputs.get("spec") or {}
    if r.type.endswith(":PersistentVolumeClaim"):
        claims, replicas = [r.inputs], 1
    else:
        claims, replicas = spec.get("volumeClaimTemplates") or [], int(spec.get("replicas") or 1)
    gp3 = ctx.price("ebs_gp3_gb_month", r)
    for claim in claims:
        size = _gib(str((((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage", "0")))
        name = f"{r.name} {(claim.get('metadata') or {}).get('name', 'volume')}"
        ctx.add(r, f"{replicas} x {size:g} GB EBS gp3 (volume claim) @ ${gp3}/GB-month", replicas * size * gp3,
                name=name)


def _service(r: RenderedResource, ctx: _Context) -> None:
    if (r.inputs.get("spec") or {}).get("type") != "LoadBalancer":
        return
    annotations = (r.inputs.get("metadata") or {}).get("annotations") or {}
    nlb = annotations.get("service.beta.kubernetes.io/aws-load-balancer-type") in ("nlb", "external")
    rate = ctx.price("nlb_hourly" if nlb else "clb_hourly", r)
    ctx.add(r, f"{'Network' if nlb else 'Classic'} Load Balancer @ ${rate}/h", rate * ctx.hours)
    ctx.note("load balancer capacity units and data processed")


def _ingress(r: RenderedResource, ctx: _Context) -> None:
    meta, spec = r.inputs.get("metadata") or {}, r.inputs.get("spec") or {}
    klass = spec.get("ingressClassName") or (meta.get("annotations") or {}).get("kubernetes.io/ingress.class")
    if klass == "alb":
        rate = ctx.price("alb_hourly", r)
        ctx.add(r, f"Application Load Balancer (ingress class alb) @ ${rate}/h", rate * ctx.hours)
        ctx.note("load balancer capacity units and data processed")
    else:
        ctx.note(f"Ingress {meta.get('name', r.name)}: served by the cluster's existing ingress controller "
                 f"({f'class {klass}' if klass else 'no ingress class set'}), whose load balancer is not in this stack")


_PRICERS = {
    "aws:eks/cluster:Cluster": _eks_cluster,
    "aws:eks/nodeGroup:NodeGroup": _node_group,
    "aws:rds/instance:Instance": _rds_instance,
    "aws:ec2/natGateway:NatGateway": _nat_gateway,
    "aws:ec2/eip:Eip": _elastic_ip,
    "aws:kms/key:Key": _kms_key,
    "aws:cloudwatch/logGroup:LogGroup": _log_group,
    **{t: lambda r, ctx: None for t in BUCKETS},  # priced together by _price_buckets
    "kubernetes:apps/v1:StatefulSet": _volume_claims,
    "kubernetes:core/v1:PersistentVolumeClaim": _volume_claims,
    "kubernetes:core/v1:Service": _service,
    "kubernetes:networking.k8s.io/v1:Ingress": _ingress,
}

_UNITS = {"": 1 / 2**30, "k": 1e3 / 2**30, "M": 1e6 / 2**30, "G": 1e9 / 2**30, "T": 1e12 / 2**30,
          "Ki": 1 / 2**20, "Mi": 1 / 2**10, "Gi": 1.0, "Ti": 2.0**10}


def _gib(quantity: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity.strip())
    if not match:
        raise PriceError(f"volume size {quantity!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def _usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _signed(amount: float) -> str:
    return f"{'+' if amount >= 0 else '-'}${abs(amount):,.2f}"


def diff(base: dict[str, Any], head: dict[str, Any]) -> str:
    """Markdown for a pull request: head's total and its delta against base, per changed line.

    Both arguments are `CostReport.to_json()` documents; an empty `base` (the base branch could
    not produce one) is said so instead of showing the whole head as new.
    """
    head_total = head["total"]
    out = [f"### Monthly cost estimate: `{head['stack']}` ({head.get('region') or 'no AWS region'})", ""]
    if not base:
        out += [f"**{_usd(head_total['monthly_min'])} - {_usd(head_total['monthly_max'])}** per month; "
                "no estimate for the base branch to compare with.", ""]
    else:
        base_total = base["total"]
        out += ["| | base | this PR | delta |", "|---|---:|---:|---:|"]
        for key, label in (("monthly_min", "min / month"), ("monthly_max", "max / month")):
            out.append(f"| {label} | {_usd(base_total[key])} | {_usd(head_total[key])} | "
                       f"**{_signed(head_total[key] - base_total[key])}** |")
        out += ["", *_changed_lines(base, head)]
    out += ["<details><summary>every priced resource</summary>", "",
            "| resource | priced as | min $/month | max $/month |", "|---|---|---:|---:|"]
    out += [f"| {ln['resource']} | {ln['basis']} | {_usd(ln['monthly_min'])} | {_usd(ln['monthly_max'])} |"
            for ln in head["lines"]]
    out += ["", *[f"- assumed: {a}" for a in head["assumptions"]],
            *[f"- not priced: {n}" for n in head["not_priced"]], "", "</details>", "",
            f"Prices: `{head['price_table']['file']}`, list prices as of {head['price_table']['as_of']}."]
    return "\n".join(out) + "\n"


def _changed_lines(base: dict[str, Any], head: dict[str, Any]) -> list[str]:
    def index(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(ln["type"], ln["resource"]): ln for ln in doc["lines"]}

    before, after = index(base), index(head)
    zero = {"monthly_min": 0.0, "monthly_max": 0.0, "basis": "-"}
    rows = []
    for key in sorted(set(before) | set(after), key=lambda k: k[1]):
        old, new = before.get(key, zero), after.get(key, zero)
        if (old["monthly_min"], old["monthly_max"], old["basis"]) == (new["monthly_min"], new["monthly_max"],
                                                                      new["basis"]):
            continue
        rows.append(f"| {key[1]} | {old['basis']} | {new['basis']} | "
                    f"{_signed(new['monthly_min'] - old['monthly_min'])} / "
                    f"{_signed(new['monthly_max'] - old['monthly_max'])} |")
    if not rows:
        return ["No priced resource changed.", ""]
    return ["| resource | base | this PR | delta min / max |", "|---|---|---|---:|", *rows, ""]
