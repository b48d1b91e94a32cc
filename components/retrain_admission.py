"""What the monitor may create: only retraining Jobs that match a rendered training template.

The monitor's Role grants `create` on Jobs, and RBAC cannot say which Jobs (components/jobs.py).
Without more, its token could create a Job that mounts any Secret of the namespace (the tracking
server's admin password, MinIO's root credential) or runs as any service account. A
ValidatingAdmissionPolicy closes that: a Job created by a namespace's `monitoring` service account
is admitted only if its pod

- runs as the service account `training`, with no API token mounted;
- has exactly the template's containers: the workload image, command `mlops train`, and the
  arguments of one of the namespace's training templates, optionally followed by what the monitor
  adds (`--data s3://<capture bucket>/monitoring/<endpoint>/retrain/<run>.parquet --retraining`,
  workloads/monitoring/retrain_jobs.py), no init or ephemeral containers;
- has only emptyDir volumes (no Secret, projected, hostPath or any other source);
- references only the training credentials' Secrets (components/credentials.py) in `env`/`envFrom`.

Host namespaces and privileges are already refused by the namespace's restricted Pod Security level.

One policy serves every namespace of the cluster: its parameters are the ConfigMap
`retrain-admission` in the namespace of the Job being admitted (no parameters: denied). The stack
that owns the cluster (`cluster.mode` create or kubeconfig) registers the policy and its binding;
every stack, a ci one on dev's cluster included, writes its own parameters. The CEL uses the
Kubernetes strings library (`join`, `split`); tests/infra/test_credentials.py evaluates it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

PARAMS = "retrain-admission"
MONITORING_ACCOUNT = "monitoring"
TRAINING_COMMAND = ["mlops", "train"]
SEPARATOR = "\n"  # joins a template's arguments; an argument holding it is refused
PART_OF = {"app.kubernetes.io/part-of": "mlops-platform"}

# `variables.pod` etc. are evaluated in order; each validation may use them.
VARIABLES = [
    {"name": "pod", "expression": "object.spec.template.spec"},
    {"name": "containers", "expression": "variables.pod.containers"},
    {"name": "secrets", "expression": "params.data.secrets.split(',')"},
]
_TEMPLATE_ARGS = (
    "params.data.exists(k, k.startsWith('args.') && (c.args.join('\\n') == params.data[k] || "
    "(c.args.size() > 3 && c.args[c.args.size() - 2].matches(params.data.retrainData) && "
    "c.args.join('\\n') == params.data[k] + '\\n--data\\n' + c.args[c.args.size() - 2] + '\\n--retraining')))")
VALIDATIONS = [
    ("variables.pod.serviceAccountName == params.data.serviceAccount && "
     "has(variables.pod.automountServiceAccountToken) && variables.pod.automountServiceAccountToken == false",
     "a retraining Job runs as the training service account, without an API token"),
    ("(!has(variables.pod.initContainers) || variables.pod.initContainers.size() == 0) && "
     "(!has(variables.pod.ephemeralContainers) || variables.pod.ephemeralContainers.size() == 0)",
     "a retraining Job has no init or ephemeral containers"),
    (f"variables.containers.all(c, c.image == params.data.image && has(c.command) && c.command == {TRAINING_COMMAND!r})",
     "a retraining Job runs the workload image's `mlops train`"),
    ("variables.containers.all(c, has(c.args) && c.args.all(a, !a.contains('\\n')) && " + _TEMPLATE_ARGS + ")",
     "a retraining Job's arguments are a training template's, plus the monitor's --data URI and --retraining"),
    ("!has(variables.pod.volumes) || variables.pod.volumes.all(v, has(v.emptyDir))",
     "a retraining Job mounts only emptyDir volumes (no Secret, projected or hostPath volume)"),
    ("variables.containers.all(c, (!has(c.env) || c.env.all(e, !has(e.valueFrom) || !has(e.valueFrom.secretKeyRef) "
     "|| e.valueFrom.secretKeyRef.name in variables.secrets)) && (!has(c.envFrom) || c.envFrom.all(s, "
     "!has(s.secretRef) || s.secretRef.name in variables.secrets)))",
     "a retraining Job reads only the training credentials' Secrets"),
]


def policy_spec() -> dict[str, Any]:
    return {
        "failurePolicy": "Fail",
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                                                "operations": ["CREATE", "UPDATE"], "resources": ["jobs"]}]},
        "matchConditions": [{"name": "created-by-the-monitor", "expression":
                             f"request.userInfo.username == 'system:serviceaccount:' + request.namespace + "
                             f"':{MONITORING_ACCOUNT}'"}],
        "variables": VARIABLES,
        "validations": [{"expression": e, "message": m} for e, m in VALIDATIONS],
    }


def binding_spec(policy_name: pulumi.Input[str]) -> dict[str, Any]:
    return {
        "policyName": policy_name,
        "validationActions": ["Deny"],
        # No namespace: the parameters are looked up in the namespace of the Job being admitted.
        "paramRef": {"name": PARAMS, "parameterNotFoundAction": "Deny"},
        "matchResources": {"namespaceSelector": {"matchLabels": PART_OF}},
    }


def _literal(text: str) -> str:
    """`text` as an RE2 literal."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def parameters(image: str, account: str, secrets: Sequence[str], templates: Sequence[Sequence[str]],
               capture_bucket: str, endpoints: Sequence[str]) -> dict[str, str]:
    """The namespace's ConfigMap data: what its training templates render."""
    for args in templates:
        if any(SEPARATOR in a for a in args):
            raise ValueError(f"a training argument holds a newline: {args}")
    names = "|".join(_literal(e) for e in endpoints)
    return {
        "image": image,
        "serviceAccount": account,
        "secrets": ",".join(secrets),
        "retrainData": f"^s3://{_literal(capture_bucket)}/monitoring/({names})/retrain/[A-Za-z0-9._-]+\\.parquet$",
        **{f"args.{i}": SEPARATOR.join(args) for i, args in enumerate(templates)},
    }


def register_policy(parent: pulumi.Resource, name: str, environment: str) -> None:
    """The cluster-wide policy and binding (only the stack that owns the cluster may create them)."""
    child = pulumi.ResourceOptions(parent=parent)
    resource_name = f"mlops-{environment}-retrain-jobs"
    policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
        f"{name}-retrain-admission", metadata={"name": resource_name, "labels": PART_OF}, spec=policy_spec(),
        opts=child)
    k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
        f"{name}-retrain-admission", metadata={"name": resource_name, "labels": PART_OF},
        spec=binding_spec(policy.metadata["name"]), opts=child)
