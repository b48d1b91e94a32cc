"""Read `stacks/Pulumi.<stack>.yaml` the way a user wrote it, or say in one line what is wrong.

Everything that can go wrong before the config is validated (an unknown stack, a file that
is not YAML, a key given twice, a `config:` that is not a mapping) is a ConfigError naming
the file, the line or key, and what is allowed; `components/config.py` validates the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from components.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = ROOT / "stacks"
# What Pulumi itself reads from a stack file; anything else is a typo (`confg:`).
TOP_LEVEL_KEYS = ("config", "environment", "secretsprovider", "encryptedkey", "encryptionsalt")
_EXAMPLE = "config: followed by entries such as mlops-platform:name: dev"


def known_stacks() -> list[str]:
    return sorted(stack_name_of(p) for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def stack_file(stack: str) -> Path:
    """`dev` -> stacks/Pulumi.dev.yaml; a path is taken as it is."""
    path = Path(stack)
    if path.suffix in (".yaml", ".yml") or "/" in stack:
        if path.is_file():
            return path
        raise ConfigError(f"{stack}: no such stack file; give a stack name ({', '.join(known_stacks())}) "
                          "or the path of an existing Pulumi.<stack>.yaml")
    candidate = STACKS_DIR / f"Pulumi.{stack}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"{stack!r} is not a stack: there is no {candidate.relative_to(ROOT)}; "
                          f"known stacks: {', '.join(known_stacks())}")
    return candidate


def stack_name_of(path: Path) -> str:
    return path.name.removeprefix("Pulumi.").removesuffix(".yaml").removesuffix(".yml")


def load_stack_config(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stack file (full keys such as `mlops-platform:tracking`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({type(exc).__name__}: {exc})") from None
    return _config_mapping(path, _parse(path, text))


def _parse(path: Path, text: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(path, node, "")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, text, exc)) from None
    finally:
        loader.dispose()


def _yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where, near = str(path), ""
    if mark is not None:
        where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        lines = text.splitlines()
        near = f" near {lines[mark.line].strip()!r}" if mark.line < len(lines) else ""
    detail = f"{problem} ({context})" if context else problem
    return " ".join(f"{where}: is not valid YAML: {detail}{near}".split())


def _refuse_duplicate_keys(path: Path, node: yaml.Node, where: str) -> None:
    """YAML keeps the last of two equal keys, hiding the first: a stack file with one is refused."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(path, item, f"{where}[{i}]")
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        full = f"{where}.{key}" if where else key
        line = key_node.start_mark.line + 1
        if key in seen and key != "<<":
            shown = full.removeprefix("config.")
            raise ConfigError(f"{path}:{line}: {shown}: is given twice (lines {seen[key]} and {line}); "
                              "YAML would silently keep only the last, so keep exactly one")
        seen[key] = line
        _refuse_duplicate_keys(path, value_node, full)


def _config_mapping(path: Path, document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        got = "empty" if document is None else f"a {_kind(document)}, not a mapping"
        raise ConfigError(f"{path}: the file is {got}; a stack file is a mapping with a config: key ({_EXAMPLE})")
    unknown = [str(k) for k in document if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: is not a stack file key; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    config = document.get("config")
    if not isinstance(config, dict):
        got = "missing" if config is None else f"a {_kind(config)}"
        raise ConfigError(f"{path}: config: is {got}; it must be a mapping of mlops-platform:<key>: <value> "
                          f"entries ({_EXAMPLE})")
    for key in config:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{path}: config: the key {key!r} is not a name; keys look like mlops-platform:<key>")
    return dict(config)


def _kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")
