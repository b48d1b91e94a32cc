"""Run the policy pack's validators over an offline render (no Pulumi CLI, no engine).

The engine hands validators `ResourceValidationArgs` / `StackValidationArgs`; this builds the
same objects from `components.render.RenderResult`, so tests exercise the exact functions
`pulumi preview --policy-pack policies` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)

from components.render import RenderedResource, RenderResult
from policies.rules import RULES, Rule


@dataclass(frozen=True)
class Violation:
    policy: str
    resource: str  # URN
    message: str


def _options(r: RenderedResource) -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=r.protect, ignore_changes=[], delete_before_replace=r.delete_before_replace,
                                 aliases=[], custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
                                 additional_secret_outputs=[], parent=r.parent)


def _provider(result: RenderResult, r: RenderedResource) -> PolicyProviderResource | None:
    if not r.provider:
        return None
    urn = r.provider.rsplit("::", 1)[0]  # a provider reference is `<urn>::<id>`
    found = next((p for p in result.resources if p.urn == urn), None)
    if found is None:
        return None
    return PolicyProviderResource(found.type, found.inputs, found.urn, found.name)


def resource_args(result: RenderResult, r: RenderedResource) -> ResourceValidationArgs:
    return ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, _options(r), _provider(result, r))


def stack_args(result: RenderResult) -> StackValidationArgs:
    by_urn: dict[str, PolicyResource] = {}
    for r in result.resources:
        by_urn[r.urn] = PolicyResource(r.type, r.inputs, r.urn, r.name, _options(r), _provider(result, r),
                                       None, [], {})
    for r in result.resources:
        by_urn[r.urn].dependencies = [by_urn[d] for d in r.depends_on if d in by_urn]
        by_urn[r.urn].parent = by_urn.get(r.parent or "")
    return StackValidationArgs(list(by_urn.values()))


def check(result: RenderResult, rules: list[Rule] = RULES) -> list[Violation]:
    """Every violation of every rule over every rendered resource (custom resources only, like the engine)."""
    violations: list[Violation] = []
    stack = stack_args(result) if any(rule.scope == "stack" for rule in rules) else None
    for rule in rules:
        if rule.scope == "stack":
            rule.validate(stack, lambda msg, urn=None, rule=rule: violations.append(
                Violation(rule.name, urn or "", msg)))
            continue
        for r in result.resources:
            if not r.custom:
                continue
            rule.validate(resource_args(result, r), lambda msg, urn=None, rule=rule, r=r: violations.append(
                Violation(rule.name, r.urn, msg)))
    return violations
