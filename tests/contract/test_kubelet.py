"""Controls for the kubelet emulation: if these fail, the contract harness proves nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.contract.kubelet import CGROUP_ROOT, ROOT, Cluster, Kubelet, expand, resolve_env

POD = {"volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                   {"name": "jobs", "configMap": {"name": "jobs"}}]}


def _container(code: str, *, read_only: bool = True, memory: str = "256Mi") -> dict:
    return {"name": "c", "command": [sys.executable, "-c", code],
            "securityContext": {"readOnlyRootFilesystem": read_only},
            "resources": {"limits": {"memory": memory}},
            "env": [{"name": "JOBS", "value": "/etc/mlops/jobs"}],
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "jobs", "mountPath": "/etc/mlops/jobs"}]}


@pytest.fixture
def kubelet() -> Kubelet:
    return Kubelet(Cluster(configmaps={"jobs": {"a.json": "{}"}}, secrets={}))


def test_a_read_only_root_refuses_writes_to_the_working_directory(kubelet: Kubelet) -> None:
    write_cwd = "open('x', 'w').write('1')"
    assert kubelet.run_job("ro", POD, _container(write_cwd), deadline=30).exit_code == 1
    assert "Read-only file system" in kubelet.outcomes[-1].log
    # Control: the same write succeeds when the root filesystem is not read-only.
    assert kubelet.run_job("rw", POD, _container(write_cwd, read_only=False), deadline=30).exit_code == 0


def test_tmp_is_a_private_writable_empty_dir_and_config_maps_are_files(kubelet: Kubelet) -> None:
    # A checkout under /tmp (a CI clone) is bound back inside the pod's /tmp: its top directory may show.
    top = {ROOT.relative_to("/tmp").parts[0]} if Path("/tmp") in ROOT.parents else set()
    code = (f"import os; open('/tmp/x', 'w').write('1'); assert set(os.listdir('/tmp')) - {top!r} == {{'x'}}, "
            "os.listdir('/tmp');"
            "assert open(os.environ['JOBS'] + '/a.json').read() == '{}'")
    outcome = kubelet.run_job("tmp", POD, _container(code), deadline=30)
    assert outcome.exit_code == 0, outcome.log


@pytest.mark.skipif(not CGROUP_ROOT.exists(), reason="no cgroup v1 memory controller on this machine")
def test_exceeding_the_memory_limit_is_an_oom_kill_and_pss_is_measured(kubelet: Kubelet) -> None:
    grow = "import time; x = bytearray(400 * 2**20); time.sleep(0.5)"
    killed = kubelet.run_job("oom", POD, _container(grow, memory="128Mi"), deadline=30)
    assert killed.exit_code == -9 or killed.exit_code == 137, killed.log
    assert killed.oom_killed
    fits = kubelet.run_job("fits", POD, _container("x = bytearray(60 * 2**20); import time; time.sleep(0.6)"),
                           deadline=30)
    assert fits.exit_code == 0 and 60 <= fits.peak_pss_mib < 256, fits.line()


def test_env_resolution_and_expansion_follow_kubernetes() -> None:
    cluster = Cluster(configmaps={"cm": {"A": "1"}}, secrets={"s": {"P": "secret"}},
                      rewrites={"svc.cluster.local:80": "127.0.0.1:9"})
    container = {"envFrom": [{"configMapRef": {"name": "cm"}}],
                 "env": [{"name": "U", "value": "http://x.ns.svc.cluster.local:80/$(A)"},
                         {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "P"}}}]}
    env = resolve_env(container, cluster)
    assert env == {"A": "1", "U": "http://x.ns.127.0.0.1:9/1", "P": "secret"}
    assert expand("$(A) $$(A) $(B)", {"A": "1"}) == "1 $(A) $(B)"


@pytest.mark.skipif(not CGROUP_ROOT.exists(), reason="no cgroup v1 memory controller on this machine")
def test_stopping_a_pod_stops_children_that_outlived_or_left_its_main_process(kubelet: Kubelet) -> None:
    # The main process starts a child in its own session and exits: a kubelet still owns that child.
    code = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
            "start_new_session=True); print(p.pid, flush=True)")
    process = kubelet.start("orphan", POD, _container(code))
    process.wait(30)
    child = int(process.log_path.read_text().split()[0])
    assert Path(f"/proc/{child}").exists()
    process.stop()
    process.outcome()
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
