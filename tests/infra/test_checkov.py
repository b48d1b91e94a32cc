"""The rendered manifests of every stack pass checkov's Kubernetes checks, offline.

checkov pins many packages, so it lives in its own virtualenv:
    python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from components.manifests import to_manifests
from components.render import ROOT, RenderResult
from tests.infra.conftest import ALL_STACKS

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = Path(__file__).with_name("checkov-skips.yaml")


def load_skips() -> list[dict]:
    return yaml.safe_load(SKIPS.read_text())


@pytest.fixture(scope="module")
def checkov_report(rendered: dict[str, RenderResult], tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}; create it with: "
                    "python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov")
    directory = tmp_path_factory.mktemp("manifests")
    count = 0
    for stack in ALL_STACKS:
        for i, manifest in enumerate(to_manifests(rendered[stack])):
            name = f"{stack}-{i:03d}-{manifest['kind']}-{manifest['metadata']['name']}.yaml"
            (directory / name).write_text(yaml.safe_dump(manifest))
            count += 1
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
           "DO_NOT_TRACK": "true"}
    run = subprocess.run(
        [str(CHECKOV), "--framework", "kubernetes", "--skip-download", "-d", str(directory), "-o", "json",
         "--quiet"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert run.stdout.strip(), f"checkov printed nothing (exit {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout)
    report = report[0] if isinstance(report, list) else report
    report["manifest_count"] = count
    return report


def is_skipped(failure: dict, skips: list[dict]) -> bool:
    for skip in skips:
        if failure["check_id"] != skip["check"]:
            continue
        only = skip.get("resources")
        if not only or any(part in failure["resource"] for part in only):
            return True
    return False


def test_skip_list_is_short_and_justified() -> None:
    skips = load_skips()
    assert len(skips) <= 6
    for skip in skips:
        assert skip["check"].startswith("CKV_K8S_") and len(skip["reason"]) > 40


def test_checkov_scanned_every_manifest(checkov_report: dict) -> None:
    summary = checkov_report.get("summary", {})
    assert summary.get("parsing_errors", 0) == 0
    assert summary.get("resource_count", 0) >= checkov_report["manifest_count"] - 10
    assert summary.get("passed", 0) > 500


def test_no_checkov_failures_outside_the_skip_list(checkov_report: dict) -> None:
    skips = load_skips()
    failures = [f"{f['check_id']} {f['check_name']} on {f['resource']} ({Path(f['file_path']).name})"
                for f in checkov_report["results"]["failed_checks"] if not is_skipped(f, skips)]
    assert failures == []
