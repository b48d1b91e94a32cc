"""A kubelet for one machine: start a rendered container as a local process, the way a node would.

What it does with a container of a rendered pod spec:
- argv: the rendered `command` + `args` (the image's ENTRYPOINT `mlops` where only `args` are
  given), `$(VAR)` expanded from the container's environment like Kubernetes does;
- environment: `env` (values, `configMapKeyRef`, `secretKeyRef`, `fieldRef` namespace/pod
  name), `envFrom` (ConfigMaps and Secrets of the render; Secret values are test strings),
  then cluster DNS names rewritten to the local stack (the only change to what was rendered);
- filesystem: a private mount namespace (`unshare --mount`) in which `/` is read-only when
  `readOnlyRootFilesystem` is set, an emptyDir mounted at `/tmp` is a fresh writable directory,
  and other volumes (ConfigMaps, projected tokens) are files in a directory the rendered mount
  path is rewritten to in env and args (the mapping is printed in the outcome);
- memory: the process tree runs in a cgroup (v1 memory controller) with the rendered memory
  limit, so exceeding it is an OOM kill, as on a node; peak PSS of the tree is sampled too;
- judged like Kubernetes: a Job's exit code within `activeDeadlineSeconds`; a Deployment's
  readiness probe (httpGet on the container port) within its startup budget.

It cannot show: scheduling, real networking (everything is 127.0.0.1; ports are the rendered
ones), real node images, IRSA token exchange (credentials are given as variables).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
IMAGE_ENTRYPOINT = ["mlops"]  # workloads/Dockerfile ENTRYPOINT
IMAGE_WORKDIR = "/app"  # workloads/Dockerfile WORKDIR, where COPY workloads/specs/ /app/specs/ lands
IMAGE_WORKDIR_FILES = {"specs": ROOT / "workloads" / "specs"}
IMAGE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1",
             "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}  # the Dockerfile's runtime ENV
SCRATCH_ROOT = ROOT / ".mlops" / "contract"  # not under /tmp: each container gets its own /tmp
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
SERVICE_ACCOUNT_TOKEN = "contract-test-token"
# The in-code override for the token directory a kubelet mounts at a fixed path (workloads/monitoring).
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value).groups()  # type: ignore[union-attr]
    return int(float(number) * UNITS.get(unit, 1))


@dataclass
class Cluster:
    """What names resolve to: the render's ConfigMaps/Secrets and the local stand-ins for cluster hosts."""

    configmaps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]]
    rewrites: dict[str, str] = field(default_factory=dict)  # substring -> replacement, applied to env values
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. static credentials standing in for IRSA
    namespace: str = "default"
    # Per service account: what IRSA would give the pod (access keys of a user holding exactly the role's policy).
    credentials: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    exit_code: int | None
    seconds: float
    peak_pss_mib: float
    limit_mib: float | None
    peak_cgroup_mib: float | None
    ready_seconds: float | None = None
    oom_killed: bool = False
    log: str = ""
    mapping: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        limit = f"{self.limit_mib:.0f}" if self.limit_mib else "-"
        ready = f" ready {self.ready_seconds:.1f}s" if self.ready_seconds is not None else ""
        return (f"{self.name}: exit {self.exit_code}{ready} in {self.seconds:.1f}s, peak PSS "
                f"{self.peak_pss_mib:.0f} MiB / limit {limit} MiB" + (" OOM-KILLED" if self.oom_killed else ""))


# --- environment and argv ------------------------------------------------------------------------


def resolve_env(container: dict[str, Any], cluster: Cluster, pod_name: str = "pod-0") -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(cluster.configmaps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(cluster.secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = _value(item, env, cluster, pod_name)
    for key, value in env.items():
        for old, new in cluster.rewrites.items():
            value = value.replace(old, new)
        env[key] = value
    return {**env, **cluster.extra_env}


def _value(item: dict[str, Any], env: dict[str, str], cluster: Cluster, pod_name: str) -> str:
    if "value" in item:
        return expand(str(item["value"]), env)
    ref = item["valueFrom"]
    if "configMapKeyRef" in ref:
        return cluster.configmaps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
    if "secretKeyRef" in ref:
        return cluster.secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
    if "fieldRef" in ref:
        return {"metadata.namespace": cluster.namespace, "metadata.name": pod_name}[ref["fieldRef"]["fieldPath"]]
    raise AssertionError(f"unsupported valueFrom {ref}")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` escapes, others stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def argv_of(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    argv = [*(container.get("command") or IMAGE_ENTRYPOINT), *container.get("args", [])]
    argv = [expand(a, env) for a in argv]
    executable = BIN / argv[0]
    return [str(executable) if executable.exists() else argv[0], *argv[1:]]


# --- running -------------------------------------------------------------------------------------


class Process:
    """One started container: its process tree, its cgroup and a PSS sampler."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *, read_only_root: bool,
                 memory_limit: int | None, scratch: Path, workdir: Path) -> None:
        self.name, self.memory_limit, self.started = name, memory_limit, time.monotonic()
        self.cgroup = _make_cgroup(memory_limit)
        self.log_path = scratch.parent / f"{scratch.name}.log"
        script = ['set -e']
        if self.cgroup:
            script.append(f'echo $$ > {self.cgroup}/cgroup.procs')
        script += _tmp_mount(scratch)
        if read_only_root:
            script.append('mount -o remount,bind,ro /')
            if _under_tmp(ROOT):  # the checkout was bound back in its own mount: make it read-only too
                script.append(f'mount -o remount,bind,ro "{ROOT}"')
        script.append(f'cd "{workdir}"')
        script.append('exec "$@"')
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script), "sh", *argv],
            env={"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", **env}, stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.peak_pss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in self._members()))
            self._stop.wait(0.2)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGTERM the pod's processes, SIGKILL what is left after a grace period, as a kubelet does.

        Always, even when the main process is gone: its children (e.g. uvicorn workers) may not be.
        """
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self._members() and time.monotonic() < deadline:
            time.sleep(0.2)
        self._signal(signal.SIGKILL)
        self.wait(10)
        self._stop.set()
        self._sampler.join(5)

    def _members(self) -> list[int]:
        """Every process of this container: its cgroup's members and the tree under the main process."""
        if self.cgroup is not None:  # cheap, and it holds what left the tree (setsid, re-parented children)
            with _quiet():
                return sorted(int(p) for p in (self.cgroup / "cgroup.procs").read_text().split())
        return _tree(self.proc.pid) if self.proc.poll() is None else []

    def _signal(self, sig: signal.Signals) -> None:
        with _quiet():
            os.killpg(self.proc.pid, sig)
        for pid in self._members():
            with _quiet():
                os.kill(pid, sig)

    def outcome(self, ready_seconds: float | None = None) -> Outcome:
        oom = False
        peak_cgroup = None
        if self.cgroup:
            oom = "oom_kill 0" not in (self.cgroup / "memory.oom_control").read_text()
            peak_cgroup = int((self.cgroup / "memory.max_usage_in_bytes").read_text()) / 2**20
            _remove_cgroup(self.cgroup)
        return Outcome(self.name, self.proc.returncode, time.monotonic() - self.started, self.peak_pss / 2**10,
                       self.memory_limit / 2**20 if self.memory_limit else None, peak_cgroup, ready_seconds, oom,
                       self.log_path.read_text(errors="replace")[-4000:])


def _under_tmp(path: Path) -> bool:
    return path == Path("/tmp") or Path("/tmp") in path.parents


def _tmp_mount(scratch: Path) -> list[str]:
    """Shell lines mounting the pod's emptyDir at /tmp. When this checkout itself lives under /tmp (a CI
    clone), it is bound back at its path inside the new /tmp, so the code and virtualenv stay visible."""
    if not _under_tmp(ROOT):
        return [f'mount --bind "{scratch}" /tmp']
    return [f'exec 3<"{ROOT}" 4<"{scratch}"',
            'mount --no-canonicalize --bind /proc/self/fd/4 /tmp',
            f'mkdir -p "{ROOT}"',
            f'mount --no-canonicalize --bind /proc/self/fd/3 "{ROOT}"',
            'exec 3<&- 4<&-']


def _make_cgroup(limit: int | None) -> Path | None:
    if limit is None or not os.access(CGROUP_ROOT, os.W_OK):
        return None
    path = CGROUP_ROOT / f"mlops-contract-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    (path / "memory.limit_in_bytes").write_text(str(limit))
    return path


def _remove_cgroup(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:  # processes still leaving
            time.sleep(0.1)


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _pss(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError | FileNotFoundError)


# --- the kubelet ---------------------------------------------------------------------------------


class Kubelet:
    """Starts containers of rendered pod specs against a `Cluster`; remembers every outcome."""

    def __init__(self, cluster: Cluster) -> None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            import pytest

            pytest.skip("the kubelet emulation needs root and unshare (mount namespaces, cgroups); CI runs as root")
        SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.scratch_root = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH_ROOT))
        self.outcomes: list[Outcome] = []
        self.image_workdir = self.scratch_root / "image-app"
        for name, source in IMAGE_WORKDIR_FILES.items():
            shutil.copytree(source, self.image_workdir / name)

    def start(self, name: str, pod: dict[str, Any], container: dict[str, Any], *,
              extra_env: dict[str, str] | None = None) -> Process:
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch_root))
        env = {**IMAGE_ENV, **resolve_env(container, self.cluster),
               **self.cluster.credentials.get(pod.get("serviceAccountName", "default"), {})}
        mapping = {IMAGE_WORKDIR: str(self.image_workdir), **self._volumes(pod, container, scratch)}
        if TOKEN_MOUNT in mapping:
            env["MLOPS_KUBE_TOKEN_DIR"] = TOKEN_MOUNT
        env = {k: _remap(v, mapping) for k, v in {**env, **(extra_env or {})}.items()}
        argv = [_remap(a, mapping) for a in argv_of(container, env)]
        limit = container.get("resources", {}).get("limits", {}).get("memory")
        read_only = bool(container.get("securityContext", {}).get("readOnlyRootFilesystem"))
        process = Process(name, argv, env, read_only_root=read_only,
                          memory_limit=quantity_bytes(limit) if limit else None,
                          scratch=scratch / "tmp", workdir=Path(_remap(container.get("workingDir") or IMAGE_WORKDIR, mapping)))
        process.mapping = mapping  # type: ignore[attr-defined]
        return process

    def _volumes(self, pod: dict[str, Any], container: dict[str, Any], scratch: Path) -> dict[str, str]:
        """emptyDir at /tmp -> the namespace's /tmp; every other volume -> a directory, path rewritten."""
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (scratch / "tmp").mkdir()
        mapping: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            volume, path = volumes[mount["name"]], mount["mountPath"]
            if path == "/tmp":
                assert "emptyDir" in volume, f"/tmp must be an emptyDir, got {volume}"
                continue
            target = scratch / "volumes" / mount["name"]
            target.mkdir(parents=True)
            for key, text in self._volume_files(volume).items():
                (target / key).write_text(text)
            mapping[path] = str(target)
        return mapping

    def _volume_files(self, volume: dict[str, Any]) -> dict[str, str]:
        """The files a ConfigMap, Secret or projected service-account volume shows in the pod."""
        if "configMap" in volume:
            return self._items(self.cluster.configmaps[volume["configMap"]["name"]], volume["configMap"])
        if "secret" in volume:
            return self._items(self.cluster.secrets[volume["secret"]["secretName"]], volume["secret"])
        files: dict[str, str] = {}
        for source in volume.get("projected", {}).get("sources", []):
            if "serviceAccountToken" in source:
                files[source["serviceAccountToken"]["path"]] = SERVICE_ACCOUNT_TOKEN
            for item in source.get("downwardAPI", {}).get("items", []):
                assert item["fieldRef"]["fieldPath"] == "metadata.namespace", item
                files[item["path"]] = self.cluster.namespace
        return files  # kube-root-ca.crt is left out: the stand-in API server speaks plain HTTP

    @staticmethod
    def _items(data: dict[str, str], source: dict[str, Any]) -> dict[str, str]:
        if "items" not in source:
            return dict(data)
        return {item["path"]: data[item["key"]] for item in source["items"]}

    def run_job(self, name: str, pod: dict[str, Any], container: dict[str, Any], deadline: float,
                extra_env: dict[str, str] | None = None) -> Outcome:
        process = self.start(name, pod, container, extra_env=extra_env)
        process.wait(deadline)
        process.stop()
        outcome = process.outcome()
        self.outcomes.append(outcome)
        return outcome

    def run_until_ready(self, name: str, pod: dict[str, Any], container: dict[str, Any], *,
                        extra_env: dict[str, str] | None = None) -> tuple[Process, float | None]:
        """Start a long-running container; wait for its readiness probe within the startup budget."""
        import httpx

        process = self.start(name, pod, container, extra_env=extra_env)
        probe = container.get("startupProbe") or container["readinessProbe"]
        budget = probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        readiness = container["readinessProbe"]["httpGet"]
        url = f"http://127.0.0.1:{container_port(container, readiness['port'])}{readiness.get('path', '/')}"
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline and process.proc.poll() is None:
            try:
                if 200 <= httpx.get(url, timeout=2).status_code < 400:
                    return process, time.monotonic() - process.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return process, None


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def _remap(text: str, mapping: dict[str, str]) -> str:
    for path, target in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, target)
    return text
