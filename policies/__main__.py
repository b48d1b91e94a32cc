"""The mlops-platform policy pack: `pulumi preview -s <stack> --policy-pack policies`.

Every rule is mandatory: a violation fails the preview or update. The validators are plain
functions in `policies/rules.py`, so tests run them offline over every rendered stack.
Constructing the PolicyPack starts the analyzer the Pulumi engine talks to.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.pack import PACK_NAME, policy_list

PolicyPack(name=PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=policy_list())
