"""The rules of `policies/rules.py` as pulumi-policy Policy objects (every one mandatory)."""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, Policy, ResourceValidationPolicy, StackValidationPolicy

from policies.rules import RULES

PACK_NAME = "mlops-platform"


def policy_list() -> list[Policy]:
    return [
        StackValidationPolicy(name=rule.name, description=rule.description, validate=rule.validate,
                              enforcement_level=EnforcementLevel.MANDATORY)
        if rule.scope == "stack" else
        ResourceValidationPolicy(name=rule.name, description=rule.description, validate=rule.validate,
                                 enforcement_level=EnforcementLevel.MANDATORY)
        for rule in RULES
    ]
