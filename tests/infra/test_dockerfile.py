"""The workload image, checked without a Docker engine: the Dockerfile is parsed, not built.

Its declared entrypoints must be real CLI commands, every container the stacks render from
the workload image must run one of them, and the image must be pinned, non-root, telemetry-off.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import click
import pytest
import typer.main

from components.config import parse_environment
from components.render import ROOT, RenderResult, load_stack_config, stack_file
from components.security import NON_ROOT_UID
from tests.infra.conftest import ALL_STACKS
from tests.infra.helpers import pod_spec, workloads
from workloads.cli import app

DOCKERFILE = ROOT / "workloads" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): enough of the Dockerfile grammar for our own file."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base=base, name=parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def entrypoints(stage: Stage) -> list[list[str]]:
    (label,) = [arg for arg in stage.all("LABEL") if "io.mlops-platform.entrypoints" in arg]
    value = re.search(r'io\.mlops-platform\.entrypoints="([^"]+)"', label).group(1)
    return [e.split() for e in value.split("|")]


def test_multi_stage_with_a_pinned_slim_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", stage.base), stage.base
    assert stages[-1].name == "runtime"
    # The runtime stage copies the built virtualenv instead of compiling anything itself.
    assert any("--from=build" in c and "/opt/venv" in c for c in stages[-1].all("COPY"))
    assert not stages[-1].all("RUN") or all("pip install" not in r for r in stages[-1].all("RUN"))


def test_installs_runtime_dependencies_only(stages: list[Stage]) -> None:
    installs = [r for s in stages for r in s.all("RUN") if "pip install" in r]
    assert any(re.search(r"pip install \.(\s|$)", r) for r in installs)
    assert not any("[dev]" in r or "-e " in r for r in installs)


def test_runs_as_the_pods_non_root_uid(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == NON_ROOT_UID  # numeric, so runAsNonRoot can verify it


def test_telemetry_off_and_specs_in_app_specs(stages: list[Stage]) -> None:
    env = " ".join(stages[-1].all("ENV"))
    assert "MLFLOW_DISABLE_TELEMETRY=true" in env and "DO_NOT_TRACK=true" in env
    assert any(c.split()[-1].rstrip("/") == "/app/specs" and "workloads/specs" in c for c in stages[-1].all("COPY"))


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_configured_training_spec_is_in_the_image(stack: str) -> None:
    raw = {k.split(":", 1)[1]: v for k, v in load_stack_config(stack_file(stack)).items()
           if k.startswith("mlops-platform:") and not (isinstance(v, dict) and set(v) == {"secure"})}
    for job in parse_environment(raw).workloads.training:
        assert job.spec.startswith("/app/specs/")
        assert (ROOT / "workloads" / "specs" / job.spec.removeprefix("/app/specs/")).is_file(), job.spec


def cli_commands() -> dict[str, click.Command]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("entry", ["mlops train", "mlops monitor", "mlops serve", "mlflow server", "python -c"])
def test_declared_entrypoints_exist(stages: list[Stage], entry: str) -> None:
    declared = [" ".join(e) for e in entrypoints(stages[-1])]
    assert entry in declared
    program, command = entry.split()
    if program == "mlops":
        assert command in cli_commands(), f"`mlops {command}` is not a command of workloads/cli.py (yet)"
    elif program == "python":  # the backup CronJob's uploader (components/backup.py): the image's interpreter
        assert command == "-c"
    else:
        from mlflow.cli import cli as mlflow_cli

        assert command in mlflow_cli.commands
    assert stages[-1].all("ENTRYPOINT") == ['["mlops"]']


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_rendered_workload_containers_run_declared_entrypoints(
        rendered: dict[str, RenderResult], stages: list[Stage], stack: str) -> None:
    declared = entrypoints(stages[-1])
    image_prefix = "ghcr.io/mlops-platform/workloads:"
    seen = set()
    for workload in workloads(rendered[stack]):
        for c in pod_spec(workload)["containers"]:
            if not c["image"].startswith(image_prefix):
                continue  # postgres, minio: their own images
            assert c["command"][:2] in declared, f"{workload['metadata']['name']}: {c['command']}"
            seen.add(" ".join(c["command"][:2]))
    assert seen >= {"mlops train", "mlops monitor", "mlops serve", "mlflow server"}
    assert seen - {"python -c"} == {"mlops train", "mlops monitor", "mlops serve", "mlflow server"}


def test_dockerignore_keeps_secrets_and_virtualenvs_out(stages: list[Stage]) -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    for must in (".git", ".venv", ".venv-checkov", ".mlops", "tests"):
        assert must in patterns
    # Everything the Dockerfile copies from the context exists and is not ignored.
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy:
                continue
            for source in shlex.split(copy)[:-1]:
                path = Path(source.rstrip("/"))
                assert (ROOT / path).exists(), source
                assert not any(fnmatch(str(path), p) or str(path).startswith(p + "/") for p in patterns), source


def test_parser_reads_continuations_and_stages() -> None:
    args, parsed = parse('ARG B=python:3.11.1-slim-bookworm\nFROM ${B} AS one\nRUN a \\\n  && b\nFROM ${B}\nUSER 1\n')
    assert args == {"B": "python:3.11.1-slim-bookworm"}
    assert [s.name for s in parsed] == ["one", None]
    assert parsed[0].all("RUN") == ["a  && b"] and parsed[1].all("USER") == ["1"]
