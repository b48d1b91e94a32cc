"""Run the real Pulumi program for a stack file offline, under Pulumi's mocks.

No Pulumi CLI, no cloud credentials: the program in `__main__.py` runs exactly as
`pulumi preview` would run it, but every resource registration is answered by
`RenderMocks` and recorded with its inputs and options. The tests use this, and so
does `mlops plan STACK`.

Secrets cannot be decrypted without the CLI, so `secure:` values in a stack file are
replaced by placeholders (still marked secret) unless real values are passed in.
"""

from __future__ import annotations

import asyncio
import json
import runpy
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

from components.config import PROJECT
from components.stack_file import ROOT, load_stack_config, stack_file, stack_name_of

# Reading a stack file (and its one-line errors) lives in stack_file.py; callers import it from here too.
ACCOUNT_ID = "123456789012"
_SECRET_SIG = rpc._special_secret_sig  # marks a secret value on the wire
_render_lock = threading.Lock()  # the Pulumi runtime is process-global state

# What a StackReference to the stack that owns the shared cluster answers with offline.
# These are the outputs `__main__.py` exports for a stack whose cluster.mode is `create`.
DEFAULT_STACK_REFERENCE_OUTPUTS: dict[str, Any] = {
    "cluster_name": "mlops-dev",
    "kubeconfig": '{"apiVersion": "v1", "kind": "Config", "clusters": []}',
    "oidc_provider_arn": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE",
    "oidc_provider_url": "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE",
    "vpc_id": "vpc-0123456789abcdef0",
    "private_subnet_ids": ["subnet-0aaa", "subnet-0bbb"],
    "cluster_security_group_id": "sg-0123456789abcdef0",
    "training_pools": [{"name": "cpu", "gpu": False}],
}


@dataclass
class RenderedResource:
    type: str
    name: str
    urn: str
    custom: bool
    inputs: dict[str, Any]
    parent: str | None = None
    provider: str | None = None
    protect: bool = False
    retain_on_delete: bool = False
    delete_before_replace: bool = False
    depends_on: list[str] = field(default_factory=list)
    secret_inputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "urn": self.urn,
            "parent": self.parent,
            "custom": self.custom,
            "provider": self.provider,
            "protect": self.protect,
            "retain_on_delete": self.retain_on_delete,
            "depends_on": self.depends_on,
            "inputs": _redact(self.inputs, self.secret_inputs),
        }


@dataclass
class RenderResult:
    stack: str
    resources: list[RenderedResource]
    outputs: dict[str, Any]
    secret_outputs: set[str]

    def of_type(self, type_: str) -> list[RenderedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> RenderedResource:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        if len(found) != 1:
            raise LookupError(f"expected one {type_} {name or ''}, found {[r.name for r in found]}")
        return found[0]

    def by_urn(self, urn: str) -> RenderedResource:
        return next(r for r in self.resources if r.urn == urn)

    def children(self, parent_urn: str | None) -> Iterator[RenderedResource]:
        return (r for r in self.resources if r.parent == parent_urn)

    def types(self) -> set[str]:
        return {r.type for r in self.resources}

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "outputs": {k: "[secret]" if k in self.secret_outputs else v for k, v in self.outputs.items()},
            "resources": [r.to_json() for r in self.resources],
        }


class RenderMocks(pulumi.runtime.Mocks):
    """Answers registrations with plausible provider outputs so the program's wiring resolves."""

    def __init__(self, region: str, stack_reference_outputs: Mapping[str, Any]):
        self.region = region
        self.stack_reference_outputs = dict(stack_reference_outputs)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        typ, name = args.typ, args.name
        if typ == "pulumi:pulumi:StackReference":
            return f"{name}-id", {**state, "outputs": self.stack_reference_outputs, "secretOutputNames": ["kubeconfig"]}
        if typ.startswith("aws:"):
            service = typ.split(":")[1].split("/")[0]
            state.setdefault("arn", f"arn:aws:{service}:{self.region}:{ACCOUNT_ID}:{name}")
        if typ.startswith("kubernetes:") and "metadata" in state:
            meta = dict(state["metadata"] or {})
            meta.setdefault("name", name)
            state["metadata"] = meta
        state.update(_COMPUTED.get(typ, lambda n, s, r: {})(name, state, self.region))
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        token = args.token
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/render", "userId": "render"}, []
        if token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region, "id": self.region}, []
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}, []
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{self.region}{z}" for z in "abcdef"]
            return {"names": names, "zoneIds": [f"use1-az{i}" for i in range(1, 7)]}, []
        if token == "aws:eks/getAddonVersion:getAddonVersion":
            return {"version": "v1.0.0-eksbuild.1", "addonName": args.args.get("addonName")}, []
        return dict(args.args), []


def _bucket(name: str, state: dict[str, Any], region: str) -> dict[str, Any]:
    bucket = state.get("bucket") or f"{name}-render"
    return {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}", "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com"}


_COMPUTED = {
    "aws:s3/bucket:Bucket": _bucket,
    "aws:s3/bucketV2:BucketV2": _bucket,
    "aws:kms/key:Key": lambda n, s, r: {"keyId": f"{n}-key-id", "arn": f"arn:aws:kms:{r}:{ACCOUNT_ID}:key/{n}"},
    "aws:iam/role:Role": lambda n, s, r: {"arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{s.get('name') or n}", "name": s.get("name") or n},
    "aws:iam/policy:Policy": lambda n, s, r: {"arn": f"arn:aws:iam::{ACCOUNT_ID}:policy/{s.get('name') or n}"},
    "aws:eks/cluster:Cluster": lambda n, s, r: {
        "name": s.get("name") or n,
        "endpoint": f"https://{n}.gr7.{r}.eks.amazonaws.com",
        "certificateAuthority": {"data": "LS0tLS1CRUdJTi1DRVJUSUZJQ0FURS0tLS0t"},
        "identities": [{"oidcs": [{"issuer": f"https://oidc.eks.{r}.amazonaws.com/id/{n.upper()}"}]}],
        "vpcConfig": {**(s.get("vpcConfig") or {}), "clusterSecurityGroupId": "sg-cluster0123"},
    },
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": lambda n, s, r: {
        "arn": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{str(s.get('url', '')).removeprefix('https://')}",
    },
    "aws:rds/instance:Instance": lambda n, s, r: {
        "address": f"{n}.abcdefgh.{r}.rds.amazonaws.com",
        "endpoint": f"{n}.abcdefgh.{r}.rds.amazonaws.com:5432",
        "port": 5432,
    },
    "aws:ec2/launchTemplate:LaunchTemplate": lambda n, s, r: {"latestVersion": 1},
    "aws:cloudwatch/logGroup:LogGroup": lambda n, s, r: {
        "arn": f"arn:aws:logs:{r}:{ACCOUNT_ID}:log-group:{s.get('name') or n}"},
    "aws:rds/subnetGroup:SubnetGroup": lambda n, s, r: {"name": s.get("name") or n},
    "aws:rds/parameterGroup:ParameterGroup": lambda n, s, r: {"name": s.get("name") or n},
    "aws:ec2/vpc:Vpc": lambda n, s, r: {"id": f"vpc-{n}"},
    "aws:ec2/securityGroup:SecurityGroup": lambda n, s, r: {"id": f"sg-{n}"},
    "random:index/randomPassword:RandomPassword": lambda n, s, r: {"result": f"render-{n}-Aa1!xxxxxxxx"},
    "random:index/randomId:RandomId": lambda n, s, r: {"hex": "a1b2c3d4", "b64Url": "obLD1A"},
}


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, keeping what `Mocks.new_resource` never sees: the resource options."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.registered: list[RenderedResource] = []
        self._lock = threading.Lock()

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        inputs = rpc.deserialize_properties(request.object)
        secret_inputs = [k for k, v in _struct_to_python(request.object).items() if _SECRET_SIG in json.dumps(v)]
        with self._lock:
            self.registered.append(
                RenderedResource(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    custom=bool(request.custom),
                    inputs=inputs,
                    parent=request.parent or None,
                    provider=request.provider or None,
                    protect=bool(request.protect),
                    retain_on_delete=bool(request.retainOnDelete),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    depends_on=list(request.dependencies),
                    secret_inputs=secret_inputs,
                )
            )
        return response


def render_stack(
    stack: str,
    *,
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    stack_reference_outputs: Mapping[str, Any] | None = None,
    stack_name: str | None = None,
) -> RenderResult:
    """Render a stack file (or, with `config`, a config mapping) and return what was registered.

    `config` maps full keys (`mlops-platform:kind`, `aws:region`) to values as they appear
    in a stack file; `{"secure": ...}` values are secrets. Raises the program's exception
    (a ConfigError for bad config) after the runtime has settled.
    """
    if config is None:
        path = stack_file(stack)
        config = load_stack_config(path)
        stack_name = stack_name or stack_name_of(path)
    stack_name = stack_name or stack
    flat, secret_keys = _flatten_config(config, secrets or {})
    region = str(flat.get("aws:region", "us-east-1"))
    mocks = RenderMocks(region, stack_reference_outputs or DEFAULT_STACK_REFERENCE_OUTPUTS)
    with _render_lock:
        return _run_program(stack_name, flat, secret_keys, mocks)


def _flatten_config(config: Mapping[str, Any], secrets: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    flat: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in config.items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            short = full.split(":", 1)[1]
            value = secrets.get(short, f"render-placeholder-{short}-0123456789")
            secret_keys.append(full)
        elif short_secret := secrets.get(full.split(":", 1)[1]):
            # An explicitly passed secret wins (tests use this to mark values secret).
            value = short_secret
            secret_keys.append(full)
        flat[full] = value if isinstance(value, str) else json.dumps(value)
    for short, value in secrets.items():
        full = f"{PROJECT}:{short}"
        if full not in flat:
            flat[full] = value
            secret_keys.append(full)
    return flat, secret_keys


def _run_program(stack_name: str, flat: dict[str, str], secret_keys: list[str], mocks: RenderMocks) -> RenderResult:
    from pulumi.runtime import settings as pulumi_settings
    from pulumi.runtime.stack import run_pulumi_func

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        pulumi_settings.ROOT.set(None)
        pulumi.runtime.set_all_config(flat, secret_keys)
        monitor = RecordingMonitor(mocks)
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack_name, preview=False, monitor=monitor)
        root = pulumi_settings.get_root_resource()
        program = str(ROOT / "__main__.py")

        def run_program() -> None:
            runpy.run_path(program, run_name="__main__")

        try:
            loop.run_until_complete(run_pulumi_func(run_program))
        except Exception as exc:
            # Callers (and tests) can see what had been registered before the program failed.
            exc.registered_resources = list(monitor.registered)  # type: ignore[attr-defined]
            raise
        outputs, secret_outputs = loop.run_until_complete(_resolve_outputs(root))
    finally:
        pulumi.runtime.set_all_config({}, [])
        pulumi_settings.ROOT.set(None)
        asyncio.set_event_loop(None)
        loop.close()
    return RenderResult(stack=stack_name, resources=monitor.registered, outputs=outputs, secret_outputs=secret_outputs)


async def _resolve_outputs(root: Any) -> tuple[dict[str, Any], set[str]]:
    outputs: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in (getattr(root, "outputs", None) or {}).items():
        output = pulumi.Output.from_input(value)
        outputs[key] = await output.future(with_unknowns=False)
        if await output.is_secret():
            secret.add(key)
    return outputs, secret


def _struct_to_python(struct: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(struct)


def _redact(inputs: dict[str, Any], secret_keys: list[str]) -> dict[str, Any]:
    return {k: ("[secret]" if k in secret_keys else v) for k, v in inputs.items()}
