"""The real backends of `Environments`: Pulumi's Automation API, the cluster through kubectl.

Both need tools the unit tests don't have (the Pulumi CLI, a cluster); the orchestration in
`workloads/ci/environments.py` is tested against fakes of the same interfaces.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from workloads.ci.environments import (
    CREATED_TAG,
    EXPIRES_TAG,
    NAME_PATTERN,
    PROJECT,
    ROOT,
    EnvError,
    EnvironmentInfo,
    Environments,
    EnvUsageError,
    parse_stamp,
)

PORT_FORWARD_SECONDS = 30.0


def require_pulumi() -> str:
    path = shutil.which("pulumi")
    if path is None:
        raise EnvUsageError("the Pulumi CLI is not installed: short-lived environments need it "
                            "(https://www.pulumi.com/docs/install/, or pulumi/actions in CI)")
    return path


class AutomationBackend:
    """Pulumi's Automation API over this project directory (stack files go to stacks/)."""

    def __init__(self, work_dir: Path = ROOT):
        require_pulumi()
        from pulumi import automation as auto

        self._auto = auto
        self.work_dir = work_dir

    def _stack(self, name: str) -> Any:
        return self._auto.create_or_select_stack(stack_name=name, work_dir=str(self.work_dir))

    def create(self, name: str, config: dict[str, Any], secret_config: dict[str, str]) -> None:
        values = {k: self._auto.ConfigValue(v if isinstance(v, str) else json.dumps(v)) for k, v in config.items()}
        values.update({f"{PROJECT}:{k}": self._auto.ConfigValue(v, secret=True) for k, v in secret_config.items()})
        self._stack(name).set_all_config(values)

    def up(self, name: str) -> dict[str, Any]:
        result = self._stack(name).up(on_output=print)
        return {k: v.value for k, v in result.outputs.items()}

    def outputs(self, name: str) -> dict[str, Any]:
        return {k: v.value for k, v in self._stack(name).outputs().items()}

    def destroy(self, name: str) -> None:
        self._stack(name).destroy(on_output=print)

    def remove(self, name: str) -> None:
        self._stack(name).workspace.remove_stack(name)

    def environments(self) -> list[EnvironmentInfo]:
        workspace = self._auto.LocalWorkspace(work_dir=str(self.work_dir))
        found = []
        for summary in workspace.list_stacks():
            if not re.fullmatch(NAME_PATTERN, summary.name):
                continue
            tags = json.loads(workspace.get_config(summary.name, f"{PROJECT}:tags").value or "{}").get("extra", {})
            found.append(EnvironmentInfo(
                summary.name,
                parse_stamp(tags[CREATED_TAG]) if CREATED_TAG in tags else None,
                parse_stamp(tags[EXPIRES_TAG]) if EXPIRES_TAG in tags else None))
        return found


class KubectlCluster:
    """The cluster through `kubectl` (its current context is the shared dev cluster)."""

    def __init__(self) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise EnvUsageError("kubectl is not installed; smoke tests and namespace leak checks need it")
        self.kubectl = kubectl

    def _run(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run([self.kubectl, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise EnvError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def run_job_from(self, namespace: str, cronjob: str, timeout: float) -> None:
        job = f"{cronjob}-smoke-{int(time.time())}"
        self._run("create", "job", "-n", namespace, f"--from=cronjob/{cronjob}", job)
        self._run("wait", "-n", namespace, f"job/{job}", "--for=condition=complete", f"--timeout={int(timeout)}s",
                  timeout=timeout + 30)

    def predict(self, namespace: str, service: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST `payload` to the service's /invocations through `kubectl port-forward`."""
        import httpx

        # Local port 0: kubectl picks a free one and says which, so we never talk to someone else's server.
        forward = subprocess.Popen([self.kubectl, "port-forward", "-n", namespace, f"svc/{service}", ":80"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            port = _forwarded_port(forward, f"svc/{service} in {namespace}")
            deadline = time.monotonic() + PORT_FORWARD_SECONDS
            while True:
                try:
                    response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=30)
                    response.raise_for_status()
                    return dict(response.json())
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        finally:
            forward.terminate()
            forward.wait(timeout=10)

    def leftovers(self, namespace: str) -> list[str]:
        proc = subprocess.run([self.kubectl, "get", "all,pvc,configmap,secret,ingress,serviceaccount,role",
                               "-n", namespace, "-o", "name", "--ignore-not-found"],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0 and "NotFound" not in proc.stderr:
            raise EnvError(f"kubectl get -n {namespace}: {proc.stderr.strip()}")
        # Kubernetes creates these in every namespace; they go with it.
        default = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
        return [line for line in proc.stdout.split() if line not in default]


def _forwarded_port(forward: subprocess.Popen[str], target: str) -> int:
    """The local port from kubectl's first line (`Forwarding from 127.0.0.1:PORT -> 80`)."""
    assert forward.stdout is not None and forward.stderr is not None
    ready, _, _ = select.select([forward.stdout], [], [], PORT_FORWARD_SECONDS)
    line = forward.stdout.readline() if ready else ""  # a line, or EOF when kubectl gave up
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if match is None:
        forward.kill()
        reason = (line + forward.stderr.read()).strip() or f"no answer in {PORT_FORWARD_SECONDS:.0f} s"
        raise EnvError(f"kubectl port-forward {target} failed: {reason}")
    return int(match.group(1))


def production(with_cluster: bool = True) -> Environments:
    """The real wiring: Automation API, kubectl, and AWS clients from the ambient credentials."""
    import boto3

    backend = AutomationBackend()
    return Environments(backend=backend, cluster=KubectlCluster() if with_cluster else None,
                        tagging=boto3.client("resourcegroupstaggingapi"), s3=boto3.client("s3"))
