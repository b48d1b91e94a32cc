"""Pod and container settings every workload shares: non-root, read-only, no privileges.

These are the Kubernetes "restricted" Pod Security Standard, plus requests and limits,
so that each component states its security posture in one call instead of re-typing it.
"""

from __future__ import annotations

from typing import Any

NON_ROOT_UID = 10001


def pod_security_context(uid: int = NON_ROOT_UID) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(uid: int = NON_ROOT_UID) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(cpu: str, memory: str, *, cpu_limit: str | None = None, gpus: int = 0) -> dict[str, Any]:
    """Requests equal to limits for memory (no OOM surprises); CPU limit defaults to 2x request."""
    limits: dict[str, str] = {"cpu": cpu_limit or _double(cpu), "memory": memory}
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
        requests["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


def _double(cpu: str) -> str:
    if cpu.endswith("m"):
        return f"{int(float(cpu[:-1]) * 2)}m"
    return f"{int(float(cpu) * 2000)}m"


def scratch_volume(name: str = "tmp", size: str = "256Mi") -> dict[str, Any]:
    """A writable emptyDir for the read-only root filesystem."""
    return {"name": name, "emptyDir": {"sizeLimit": size}}


TELEMETRY_OFF = [
    # mlflow and evidently phone home from a background thread; private clusters must not.
    {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    {"name": "DO_NOT_TRACK", "value": "true"},
]
