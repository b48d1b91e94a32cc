"""Whole stack files as users write them: every mistake is one ConfigError line, never a traceback.

`mlops plan STACK` catches ConfigError and prints it, so whatever `render_stack` raises for a
bad file is what the user sees. Each case writes a file, renders it and checks the line names
the file or key, the value and what is allowed.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from components.config import ConfigError
from components.render import render_stack, stack_file

PASSWORD = "correct-horse-battery-staple"
DEV = stack_file("dev").read_text()
LOCAL = stack_file("local").read_text()


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# (case, file text, what the one line must contain)
FILES: list[tuple[str, str, list[str]]] = [
    ("YAML syntax error", _edit(DEV, "instanceTypes: [g5.xlarge]", "instanceTypes: [g5.xlarge"),
     ["is not valid YAML", "Pulumi.dev.yaml:26:16:", "near 'maxSize: 2'"]),
    ("tab indentation", _edit(DEV, "    replicas: 1\n", "\treplicas: 1\n"),
     ["is not valid YAML", "found character '\\t' that cannot start any token"]),
    ("config written as a list", "config:\n  - mlops-platform:name: dev\n  - mlops-platform:kind: dev\n",
     ["config: is a list; it must be a mapping of mlops-platform:<key>: <value> entries"]),
    ("top-level list", "- config:\n    mlops-platform:name: dev\n",
     ["the file is a list, not a mapping; a stack file is a mapping with a config: key"]),
    ("empty file", "# nothing yet\n", ["the file is empty; a stack file is a mapping with a config: key"]),
    ("misspelt config", DEV.replace("config:\n", "confg:\n", 1),
     ["confg: is not a stack file key; allowed: config, environment"]),
    ("two documents", DEV + "---\nconfig: {}\n", ["is not valid YAML", "expected a single document"]),
    ("duplicated top-level key", _edit(DEV, "  mlops-platform:storage:\n",
                                       "  mlops-platform:tracking:\n    replicas: 3\n  mlops-platform:storage:\n"),
     ["mlops-platform:tracking: is given twice (lines 29 and 33)", "YAML would silently keep only the last"]),
    ("duplicated nested key", _edit(DEV, "    replicas: 1\n", "    replicas: 1\n    workers: 4\n    replicas: 2\n"),
     ["mlops-platform:tracking.replicas: is given twice"]),
    ("duplicated key in a list item", _edit(DEV, "        maxSize: 2\n", "        maxSize: 2\n        maxSize: 3\n"),
     ["mlops-platform:cluster.trainingPools[1].maxSize: is given twice"]),
    ("plain-text databasePassword", DEV + "  mlops-platform:databasePassword: hunter2hunter2\n",
     ["mlops-platform:databasePassword: is stored in plain text; set it with `pulumi config set --secret "
      "databasePassword <value>`"]),
    ("plain-text kubeconfig", LOCAL + "  mlops-platform:kubeconfig: |\n    apiVersion: v1\n",
     ["mlops-platform:kubeconfig: is stored in plain text"]),
    ("unquoted version loses its zero", _edit(DEV, 'version: "1.35"', "version: 1.30"),
     ["mlops-platform:cluster.version: 1.3 was read by YAML as the number 1.3; write it in quotes"]),
    (".inf as YAML writes it", _edit(DEV, "      retrainJob: churn\n", "      retrainJob: churn\n      psiThreshold: .inf\n"),
     ["mlops-platform:workloads.monitoring.psiThreshold: Infinity is not a finite number (allowed: more than 0 up to 100)"]),
    ("1e30 as YAML writes it", _edit(DEV, "      retrainJob: churn\n", "      retrainJob: churn\n      minRows: 1e30\n"),
     ["mlops-platform:workloads.monitoring.minRows: \"1e30\" is not a whole number (allowed: from 1 up to 100000000)"]),
    ("cloud that does not exist", _edit(DEV, "mlops-platform:cloud: aws", "mlops-platform:cloud: gcp"),
     ["mlops-platform:cloud: \"gcp\" is not allowed; expected one of 'aws' or 'none'"]),
    ("flow-style list with a bad type", _edit(DEV, "instanceTypes: [g5.xlarge]", "instanceTypes: [m6i.large]"),
     ["mlops-platform:cluster.trainingPools[1].instanceTypes: ['m6i.large'] have no NVIDIA GPU"]),
    ("a 1 MB value", _edit(DEV, "owner: ml-platform", "owner: " + "x" * 1_000_000),
     ["mlops-platform:tags.owner: \"xxxxxxxx", "...(1000002 characters) is not an AWS tag value"]),
]


@pytest.mark.parametrize(("case", "text", "expected"), FILES, ids=[c[0] for c in FILES])
def test_malformed_stack_file_is_one_line(tmp_path: Path, case: str, text: str, expected: list[str]) -> None:
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        render_stack(str(path), secrets={"trackingAdminPassword": PASSWORD})
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert len(message) < 400, message
    for part in expected:
        assert part in message, message


def test_unknown_stack_name() -> None:
    with pytest.raises(ConfigError) as caught:
        render_stack("production")
    assert str(caught.value) == ("'production' is not a stack: there is no stacks/Pulumi.production.yaml; "
                                 "known stacks: ci, dev, local, prod, staging")


def test_missing_stack_file_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Pulumi.qa.yaml: no such stack file; give a stack name \(ci, dev"):
        render_stack(str(tmp_path / "Pulumi.qa.yaml"))


def test_unreadable_stack_file(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_bytes(b"config:\n  mlops-platform:name: d\xe9v\n")
    with pytest.raises(ConfigError, match="cannot be read as UTF-8 text"):
        render_stack(str(path))


def test_several_problems_are_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.dev.yaml"
    text = _edit(_edit(DEV, "    replicas: 1\n", "    replicas: 0\n"), "cidr: 10.10.0.0/16", "cidr: nope")
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        render_stack(str(path), secrets={"trackingAdminPassword": PASSWORD})
    assert str(caught.value).splitlines() == [
        'mlops-platform:network.cidr: "nope" is not an IPv4 CIDR block such as 10.0.0.0/16',
        "mlops-platform:tracking.replicas: 0 is below 1 (allowed: from 1 up to 20)",
    ]


def _printed(message: str) -> str:
    """How the CLI must print a ConfigError: as plain text (no markup, emoji codes or highlighting), and
    soft-wrapped so a long line stays one line when piped or in a narrow terminal."""
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=False).print(
        message, markup=False, emoji=False, highlight=False, soft_wrap=True)
    return out.getvalue()


def test_messages_survive_the_console_unchanged(tmp_path: Path) -> None:
    # `:cloud:` is an emoji code and `[m6i.large]` a markup tag to rich: printed as Text they stay text.
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(_edit(DEV, "instanceTypes: [g5.xlarge]", "instanceTypes: [m6i.large]]"))
    with pytest.raises(ConfigError) as caught:
        render_stack(str(path))
    message = str(caught.value)
    assert "[m6i.large]" in message
    assert _printed(message) == f"{message}\n"
    cloud = 'mlops-platform:cloud: "gcp" is not allowed; expected [aws]'
    assert _printed(cloud) == f"{cloud}\n"
