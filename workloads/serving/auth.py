"""Who may score and who may reload: API keys for /invocations, a token for POST /reload.

Credentials are not settings: they come from a Kubernetes Secret as environment variables (like
MLFLOW_TRACKING_PASSWORD), never from a command line, and are never printed (`mlops --check`
shows settings only). components/serving.py renders them:
- `SERVING_RELOAD_TOKEN`: POST /reload needs `Authorization: Bearer <token>`. Without a token
  configured, /reload is accepted only from the loopback interface (a local `mlops serve`; in a
  pod that is the pod itself), never from the network.
- `SERVING_API_KEYS` (one key per line or comma-separated): when set, /invocations needs
  `Authorization: Bearer <key>`; endpoints exposed through an Ingress get keys.
Keys are compared as SHA-256 digests with `hmac.compare_digest`, so timing says nothing about them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

RELOAD_TOKEN_ENV = "SERVING_RELOAD_TOKEN"
API_KEYS_ENV = "SERVING_API_KEYS"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _matches(presented: str | None, digests: tuple[bytes, ...]) -> bool:
    if presented is None:
        return False
    digest = _digest(presented)
    return any([hmac.compare_digest(digest, known) for known in digests])  # no short-circuit: constant work


@dataclass(frozen=True)
class Credentials:
    """Digests of the API keys (empty: /invocations is open) and of the reload token (none: loopback only)."""

    api_keys: tuple[bytes, ...] = ()
    reload_token: bytes | None = None

    @classmethod
    def of(cls, api_keys: list[str] | tuple[str, ...] = (), reload_token: str | None = None) -> Credentials:
        return cls(tuple(_digest(k) for k in api_keys if k), _digest(reload_token) if reload_token else None)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        environ = os.environ if environ is None else environ
        keys = [k.strip() for k in re.split(r"[,\n]", environ.get(API_KEYS_ENV, ""))]
        return cls.of([k for k in keys if k], environ.get(RELOAD_TOKEN_ENV, "").strip() or None)

    def may_score(self, authorization: str | None) -> bool:
        return not self.api_keys or _matches(_bearer(authorization), self.api_keys)

    def may_reload(self, authorization: str | None, client_host: str | None) -> bool:
        if self.reload_token is None:
            return client_host in LOOPBACK
        return _matches(_bearer(authorization), (self.reload_token,))
