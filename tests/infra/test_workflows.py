"""GitHub Actions workflows: valid against the official schema, and wired the way the README promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from components.render import ROOT
from workloads.cli import app

WORKFLOWS = ROOT / ".github" / "workflows"
NAMES = ["ci", "preview", "ephemeral", "deploy", "reap", "image"]
CHECK_JSONSCHEMA = ROOT / ".venv" / "bin" / "check-jsonschema"


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS / f"{name}.yml").read_text())
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps of the workflow's own jobs (a job that calls a reusable workflow has none)."""
    return [s for job in workflow["jobs"].values() for s in job.get("steps", [])]


def uses(workflow: dict[str, Any]) -> list[str]:
    return [s["uses"] for s in steps(workflow) if "uses" in s]


def test_all_workflows_exist() -> None:
    assert sorted(p.stem for p in WORKFLOWS.glob("*.yml")) == sorted(NAMES)


def test_workflows_validate_against_the_github_schema() -> None:
    files = [str(WORKFLOWS / f"{n}.yml") for n in NAMES]
    run = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *files],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    run = subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0


@pytest.mark.parametrize("name", NAMES)
def test_aws_through_oidc_only(name: str) -> None:
    text = (WORKFLOWS / f"{name}.yml").read_text()
    workflow = load(name)
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    aws = [s for s in steps(workflow) if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
    if aws:
        assert workflow["permissions"]["id-token"] == "write"
        assert all("role-to-assume" in s["with"] for s in aws)


@pytest.mark.parametrize("name", ["preview", "deploy"])
def test_official_pulumi_action_with_the_policy_pack(name: str) -> None:
    # Steps that run a command (the others only install the CLI).
    pulumi_steps = [s for s in steps(load(name)) if s.get("uses") == "pulumi/actions@v6" and "command" in s["with"]]
    assert pulumi_steps
    for step in pulumi_steps:
        assert step["with"]["policyPacks"] == "policies"


def test_preview_runs_for_three_stacks_and_comments() -> None:
    workflow = load("preview")
    assert "pull_request" in workflow["on"]
    (job,) = workflow["jobs"].values()
    assert job["strategy"]["matrix"]["stack"] == ["dev", "staging", "prod"]
    (step,) = [s for s in job["steps"] if s.get("uses") == "pulumi/actions@v6"]
    assert step["with"]["command"] == "preview" and step["with"]["comment-on-pr"] is True
    assert workflow["permissions"]["pull-requests"] == "write"


def test_ephemeral_creates_smokes_and_always_destroys() -> None:
    workflow = load("ephemeral")
    assert "pull_request" in workflow["on"] and workflow["on"]["schedule"]
    assert "pull_request.number" in workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    (job,) = workflow["jobs"].values()
    assert "ephemeral-env" in job["if"]
    runs = [(s.get("run", ""), s.get("if")) for s in job["steps"]]
    order = [i for i, (run, _) in enumerate(runs) for cmd in ("env create", "env smoke", "env destroy") if cmd in run]
    assert len(order) == 3 and order == sorted(order)
    destroy = next(s for s in job["steps"] if "env destroy" in s.get("run", ""))
    assert destroy["if"] == "always()"
    assert "--ttl" in next(run for run, _ in runs if "env create" in run)


def test_deploy_goes_dev_then_staging_then_prod_behind_environments() -> None:
    workflow = load("deploy")
    assert workflow["on"]["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert jobs["dev"]["needs"] == "image" and set(jobs["staging"]["needs"]) == {"image", "dev"}
    assert set(jobs["prod"]["needs"]) == {"image", "staging"}
    assert {jobs[n]["environment"] for n in ("dev", "staging", "prod")} == {"dev", "staging", "prod"}
    assert any("kubectl create job" in s.get("run", "") for s in jobs["dev"]["steps"])  # the smoke test
    commands = [s["with"]["command"] for s in steps(workflow)
                if s.get("uses") == "pulumi/actions@v6" and "command" in s["with"]]
    assert commands == ["up", "up", "up"]


def test_the_model_is_promoted_dev_to_staging_to_prod_after_each_environment_is_up() -> None:
    jobs = load("deploy")["jobs"]

    def promoting(env: str) -> tuple[int, str]:
        (index, run), = [(i, s["run"]) for i, s in enumerate(jobs[env]["steps"]) if "mlops promote" in s.get("run", "")]
        return index, run

    assert "--alias champion --to-bundle promotion-dev" in promoting("dev")[1]
    staging = promoting("staging")[1]
    assert staging.index("--from-bundle promotion-dev") < staging.index("--alias champion --to-bundle promotion-staging")
    assert "--from-bundle promotion-staging" in promoting("prod")[1]
    for env, bundle in (("staging", "promotion-dev"), ("prod", "promotion-staging")):
        steps = jobs[env]["steps"]
        up = next(i for i, s in enumerate(steps) if s.get("with", {}).get("command") == "up")
        fetch = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("actions/download-artifact@"))
        assert up < fetch < promoting(env)[0] and steps[fetch]["with"]["name"] == bundle


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_each_environment_deploys_from_its_runner_in_the_vpc(env: str) -> None:
    """The API is private: `pulumi up` (which applies the Kubernetes layer) runs on the env's in-VPC runner."""
    job = load("deploy")["jobs"][env]
    assert job["runs-on"] == ["self-hosted", f"mlops-{env}"]
    names = [s.get("uses", "") for s in job["steps"]]
    assert not any(n.startswith("actions/setup-python") for n in names)  # the runner brings python3.11


@pytest.mark.parametrize("name", ["ephemeral", "reap"])
def test_ci_environments_are_handled_from_devs_runner(name: str) -> None:
    (job,) = load(name)["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "mlops-dev"]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_every_deploy_pins_the_built_image_by_digest(env: str) -> None:
    job = load("deploy")["jobs"][env]
    runs = [s.get("run", "") for s in job["steps"]]
    pin = next(i for i, r in enumerate(runs) if "workloads.imageDigest" in r)
    up = next(i for i, s in enumerate(job["steps"]) if s.get("with", {}).get("command") == "up")
    assert pin < up and "needs.image.outputs.digest" in runs[pin]
    needs = job["needs"] if isinstance(job["needs"], list) else [job["needs"]]
    assert "image" in needs  # outputs are readable only from jobs named in `needs`


def test_image_is_built_with_lineage_scanned_before_push_and_its_digest_recorded() -> None:
    workflow = load("image")
    assert "workflow_call" in workflow["on"] and workflow["on"]["workflow_call"]["outputs"]["digest"]
    (job,) = workflow["jobs"].values()
    order = {key: i for i, s in enumerate(job["steps"]) for key in (
        "build" if s.get("uses", "").startswith("docker/build-push-action@") else "",
        "scan" if s.get("uses", "").startswith("aquasecurity/trivy-action@") else "",
        "push" if "docker push" in s.get("run", "") else "") if key}
    assert order["build"] < order["scan"] < order["push"]
    build, scan = job["steps"][order["build"]]["with"], job["steps"][order["scan"]]["with"]
    assert build["push"] is False and build["file"] == "workloads/Dockerfile"
    assert "GIT_COMMIT=${{ github.sha }}" in build["build-args"] and "IMAGE_REF=" in build["build-args"]
    assert scan["severity"] == "CRITICAL" and scan["exit-code"] == "1"  # a critical finding fails the build
    assert "digest=" in job["steps"][order["push"]]["run"] and job["outputs"]["digest"]


def test_the_dockerfile_takes_the_lineage_build_arguments() -> None:
    text = (ROOT / "workloads" / "Dockerfile").read_text()
    assert "ARG GIT_COMMIT" in text and "ARG IMAGE_REF" in text
    assert "MLOPS_GIT_COMMIT=${GIT_COMMIT}" in text and "MLOPS_IMAGE=${IMAGE_REF}" in text


def test_reap_is_scheduled() -> None:
    workflow = load("reap")
    assert workflow["on"]["schedule"]
    assert any("mlops env reap --older-than" in s.get("run", "") for s in steps(workflow))


def test_ci_lints_type_checks_tests_and_plans_every_stack() -> None:
    runs = " ".join(s.get("run", "") for s in steps(load("ci")))
    # Lint and type check run once: inside .ci/run (scripts/test), not again as workflow steps.
    assert runs.count(".ci/run") == 1 and "ruff" not in runs and "mypy" not in runs
    script = (Path(__file__).resolve().parents[2] / "scripts" / "test").read_text()
    assert "ruff check" in script and "mypy" in script and "pytest" in script
    assert "mlops plan" in runs and all(stack in runs for stack in ("dev", "staging", "prod", "ci", "local"))


def test_every_mlops_command_in_a_workflow_exists() -> None:
    root = typer.main.get_command(app)
    seen = 0
    for name in NAMES:
        for step in steps(load(name)):
            for match in re.finditer(r"mlops ([a-z-]+)(?: ([a-z-]+))?", step.get("run", "")):
                group = root.commands.get(match.group(1))  # type: ignore[attr-defined]
                assert group is not None, match.group(0)
                if hasattr(group, "commands") and match.group(2):
                    assert match.group(2) in group.commands, match.group(0)
                seen += 1
    assert seen >= 5
