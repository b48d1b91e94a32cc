"""IAM enforced on the S3 stand-in: each IRSA role of a render becomes an IAM user holding exactly its policies.

A pod "gets" its role through `Cluster.credentials` (service account -> the user's access keys), so
every request a workload makes is signed by a principal whose only permissions are its role's.

What moto 5.2.5 judges (read in moto/core/authorization.py, moto/iam/access_control.py,
moto/s3/responses.py), once `POST /moto-api/reset-auth` "0" turns enforcement on:
- the signature and access key of every request; identity policies of IAM users (inline, attached,
  group) with Effect (an explicit Deny wins), Action/NotAction and Resource with `*` wildcards;
- S3 as `s3:<Action>` on `arn:aws:s3:::<bucket>` (bucket calls: ListObjects* -> s3:ListBucket,
  DeleteBucket, ...) or `arn:aws:s3:::<bucket>/<key>` (GetObject, also for HEAD; PutObject, also
  for every multipart step; DeleteObject; DeleteObjectVersion with a version id).
What it cannot judge, so this suite cannot either:
- Condition blocks of identity policies: no request context is passed, so every condition holds
  (a conditioned Allow acts unconditioned); `s3:prefix` on ListBucket is never checked;
- resource-based policies: bucket policies (TLS-only, deny statements), KMS key policies and grants;
- KMS at all: SSE-KMS by bucket default never calls KMS, so kms:GenerateDataKey/Decrypt on the key
  are not exercised (test_iam_enforced checks them against what the happy path did, statically);
- SNS resources: SNS calls are judged against Resource "*", so a statement naming the topic never
  matches; the user's SNS statements get Resource "*" (`moto_document`), only the action is judged;
- DeleteObjects (batch) is judged as s3:DeleteObject on the bucket ARN; CopyObject's source read is
  not checked; action names match case-sensitively (AWS: insensitively); SCPs, boundaries, sessions;
- IRSA itself: the web-identity token exchange and the role's trust policy (static keys stand in).
Emulated on top of moto: presigned (query-string signed) S3 URLs, which its enforcement cannot read
(it needs an Authorization header), are judged as AWS judges them: as the signing key's user, after
checking expiry (the signature itself is not recomputed). The tracking server hands such URLs out.
And HeadBucket, which moto judges as `s3:HeadBucket` (no such IAM action), is judged as s3:ListBucket;
a GET/HEAD of a missing key needs s3:ListBucket on the bucket too (else AWS answers 403, not 404).

`python -m tests.contract.iam -H 127.0.0.1 -p PORT` is moto's server with an audit: every
authorization decision (principal, action, resource, outcome) is appended to `$MLOPS_IAM_AUDIT`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from components.render import RenderResult
from tests.contract.kubelet import ROOT
from tests.contract.stand_ins import S3Server, free_port

AUDIT_ENV = "MLOPS_IAM_AUDIT"
ADMIN_USER = "contract-admin"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
SUBJECT = re.compile(r"^system:serviceaccount:([^:]+):([^:]+)$")


@dataclass(frozen=True)
class IrsaRole:
    """An IRSA role of the render: the one service account its trust policy admits, and its policies."""

    role: str  # the Pulumi resource name
    namespace: str
    service_account: str
    documents: tuple[dict[str, Any], ...]  # inline policy documents, as rendered
    managed_arns: tuple[str, ...] = ()

    @property
    def user(self) -> str:
        return f"irsa-{self.service_account}"


@dataclass(frozen=True)
class Decision:
    """One authorization moto made while enforcing."""

    principal: str  # user ARN, or the access key id when the key is unknown
    action: str
    resource: str
    outcome: str  # "allowed", "denied", or the error class (InvalidAccessKeyId, SignatureDoesNotMatch, ...)
    via: str = ""  # "presigned" for a URL the principal signed and another process used

    @property
    def user(self) -> str:
        return self.principal.rsplit("/", 1)[-1]


def irsa_roles(result: RenderResult) -> dict[str, IrsaRole]:
    """Every role whose trust policy names `system:serviceaccount:<ns>:<sa>`, keyed by service account."""
    roles: dict[str, IrsaRole] = {}
    for role in result.of_type("aws:iam/role:Role"):
        subjects = [value for statement in json.loads(role.inputs["assumeRolePolicy"])["Statement"]
                    for values in statement.get("Condition", {}).values() for key, value in values.items()
                    if key.endswith(":sub")]
        if not subjects:
            continue  # a role for an AWS service (EKS control plane, nodes), not for a pod
        assert len(subjects) == 1, f"{role.name}: one service account per IRSA role, got {subjects}"
        namespace, account = SUBJECT.fullmatch(subjects[0]).groups()  # type: ignore[union-attr]
        refs = {role.name, f"{role.name}-id"}  # a policy names the role by name or by id
        documents = [json.loads(p.inputs["policy"]) for p in result.of_type("aws:iam/rolePolicy:RolePolicy")
                     if p.inputs.get("role") in refs]
        documents += [json.loads(p["policy"]) for p in role.inputs.get("inlinePolicies", []) if p.get("policy")]
        managed = [a.inputs["policyArn"] for a in result.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                   if a.inputs.get("role") in refs] + list(role.inputs.get("managedPolicyArns", []))
        assert account not in roles, f"two IRSA roles for service account {account}"
        roles[account] = IrsaRole(role.name, namespace, account, tuple(documents), tuple(managed))
    return roles


def s3_arns(document: dict[str, Any]) -> set[str]:
    """Every S3 ARN a document names (bucket or object)."""
    found: set[str] = set()
    for statement in _statements(document):
        resources = statement.get("Resource", [])
        found |= {r for r in ([resources] if isinstance(resources, str) else resources) if r.startswith("arn:aws:s3")}
    return found


def moto_document(document: dict[str, Any]) -> dict[str, Any]:
    """The document moto gets: the rendered one, except SNS statements on Resource "*" (moto judges SNS calls
    against "*", so a topic ARN never matches: only whether the action is granted at all can be judged)."""
    statements = []
    for statement in _statements(document):
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        sns = [a for a in actions if a.lower().startswith("sns:")]
        assert not sns or len(sns) == len(actions), f"split SNS and other actions into two statements: {statement}"
        statements.append({**statement, "Resource": "*"} if sns else statement)
    return {**document, "Statement": statements}


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = document["Statement"]
    return [statements] if isinstance(statements, dict) else list(statements)


class EnforcingS3(S3Server):
    """moto's server (S3, IAM, SNS, SQS on one port) with the audit; `client()` signs as the admin once set."""

    def __init__(self, scratch: Path) -> None:  # not super().__init__: that starts moto without the audit
        scratch.mkdir(parents=True, exist_ok=True)
        self.audit, self.log = scratch / "iam-audit.jsonl", scratch / "moto.log"
        self.audit.write_text("")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_keys: tuple[str, str] = ("test", "test")  # what client() signs with until enforce_iam runs
        env = {**os.environ, AUDIT_ENV: str(self.audit), "PYTHONPATH": str(ROOT),
               "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}  # AWS-managed policies a role may attach
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.contract.iam", "-H", "127.0.0.1", "-p",
                                      str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("wb"), env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"moto did not start:\n{self.log.read_text()[-2000:]}")

    def client(self, key: str | None = None, secret: str | None = None, service: str = "s3") -> Any:
        import boto3

        key, secret = (key, secret or "") if key else self.admin_keys
        return boto3.client(service, endpoint_url=self.url, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1")

    def decisions(self) -> list[Decision]:
        return [Decision(**json.loads(line)) for line in self.audit.read_text().splitlines() if line]

    def forbidden_lines(self) -> list[str]:
        """The server's request log lines answered 403, whoever sent them (a second net under the audit)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if '" 403 ' in line]


def enforce_iam(server: EnforcingS3, roles: dict[str, IrsaRole]) -> dict[str, dict[str, str]]:
    """Create the admin and one user per role (exactly its policies), then switch enforcement on.

    Returns service account -> the environment a pod of it gets (what IRSA would give it)."""
    iam = server.client("test", "test", service="iam")  # not yet enforcing: setup needs no identity
    admin = _user(iam, ADMIN_USER, [ALLOW_ALL], ())
    credentials = {account: _user(iam, role.user, [moto_document(d) for d in role.documents], role.managed_arns)
                   for account, role in roles.items()}
    response = httpx.post(f"{server.url}/moto-api/reset-auth", content=b"0", timeout=10)
    response.raise_for_status()
    server.admin_keys = (admin["AWS_ACCESS_KEY_ID"], admin["AWS_SECRET_ACCESS_KEY"])
    return credentials


def _user(iam: Any, name: str, documents: list[dict[str, Any]], managed: tuple[str, ...]) -> dict[str, str]:
    iam.create_user(UserName=name)
    for index, document in enumerate(documents):
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-{index}", PolicyDocument=json.dumps(document))
    for arn in managed:
        iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


# --- the audited server (runs in moto's process) --------------------------------------------------


def _install_audit(path: Path) -> None:
    """Record each authorization decision (moto's own), and judge presigned S3 URLs as their signer."""
    import threading

    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.access_control import IAMRequestBase, S3IAMRequest

    lock = threading.Lock()

    def record(principal: str, action: str, resource: str, outcome: str, via: str = "") -> None:
        line = json.dumps({"principal": principal, "action": action, "resource": resource, "outcome": outcome,
                           "via": via})
        with lock, path.open("a") as handle:
            handle.write(line + "\n")

    check = IAMRequestBase.check_action_permitted

    def audited_check(self: Any, resource: str) -> None:
        if self._action == "s3:HeadBucket":  # not an IAM action: AWS authorizes HeadBucket as s3:ListBucket
            self._action = "s3:ListBucket"
        via = "presigned" if getattr(self, "presigned", False) else "missing key" if getattr(self, "probe", 0) else ""
        try:
            check(self, resource)
        except Exception as exc:
            record(self._access_key.arn, self._action, resource, "denied", via)
            exc.audited = True  # type: ignore[attr-defined]
            raise
        record(self._access_key.arn, self._action, resource, "allowed", via)
        if self._action == "s3:GetObject":
            _missing_key_needs_list(self, resource)

    authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action

    def audited_authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        try:
            if iam_request_cls is S3IAMRequest and _presigned(self):
                _authorize_presigned(self, resource)
            else:
                authorize(self, iam_request_cls, resource)
        except Exception as exc:  # an unknown key or a bad signature never reaches the permission check
            if not getattr(exc, "audited", False):
                query = self.querystring.get("X-Amz-Credential") or self.querystring.get("AWSAccessKeyId") or [""]
                signer = self.headers.get("Authorization") or f"Credential={query[0]}/"
                key = re.search(r"Credential=([^/]+)/", signer)
                record(key.group(1) if key and key.group(1) else "unsigned", str(self._get_action()), resource,
                       type(exc).__name__)
            raise

    IAMRequestBase.check_action_permitted = audited_check  # type: ignore[method-assign]
    ActionAuthenticatorMixin._authenticate_and_authorize_action = audited_authorize  # type: ignore[method-assign]


def _missing_key_needs_list(request: Any, resource: str) -> None:
    """AWS answers a GET/HEAD of a missing key with 404 only to a caller that may s3:ListBucket the bucket,
    to others with 403 AccessDenied: a workload probing for an optional object needs ListBucket."""
    import copy

    from moto.s3.models import s3_backends

    bucket, _, key = resource.removeprefix("arn:aws:s3:::").partition("/")
    try:
        found = s3_backends[request.account_id]["aws"].get_object(bucket, key)
    except Exception:  # no such bucket: moto answers that itself
        return
    if found is None:
        probe = copy.copy(request)
        probe._action, probe.probe = "s3:ListBucket", True
        probe.check_action_permitted(f"arn:aws:s3:::{bucket}")


def _presigned(response: Any) -> bool:
    """A query-string-signed (presigned) S3 request while enforcing: moto would fail on its missing header."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    enforcing = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
    signed = "X-Amz-Credential" in response.querystring or "AWSAccessKeyId" in response.querystring  # SigV4, V2
    return enforcing and "Authorization" not in response.headers and signed


def _authorize_presigned(response: Any, resource: str) -> None:
    """AWS judges a presigned URL as the identity that signed it: the key in X-Amz-Credential, its policies.

    Emulated: the key must exist, the URL must not have expired, the signer's policies must allow the
    action on the resource. Not emulated: the signature itself is not recomputed."""
    from datetime import UTC, datetime, timedelta

    from moto.iam.access_control import S3IAMRequest
    from moto.s3.exceptions import S3AccessDeniedError

    query = {k: v[0] for k, v in response.querystring.items()}
    if "X-Amz-Credential" in query:  # SigV4: signed at X-Amz-Date, valid X-Amz-Expires seconds
        credential = query["X-Amz-Credential"]
        signed = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expires = signed + timedelta(seconds=int(query.get("X-Amz-Expires", "0")))
    else:  # SigV2: valid until the Expires epoch
        credential = f"{query['AWSAccessKeyId']}/00000000/{response.region}/s3/aws4_request"
        expires = datetime.fromtimestamp(int(query["Expires"]), UTC)
    if datetime.now(UTC) > expires:
        raise S3AccessDeniedError()  # AWS: "Request has expired"
    headers = {k: v for k, v in response.headers.items()}
    headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host"
    request = S3IAMRequest(account_id=response.current_account, method=response.method, path=response.raw_path,
                           data=response.data, body=response.raw_body, headers=headers,
                           action=response._get_action())
    request.presigned = True  # type: ignore[attr-defined]
    request.check_action_permitted(resource)


if __name__ == "__main__":
    from moto.server import main

    _install_audit(Path(os.environ[AUDIT_ENV]))
    main(sys.argv[1:])
