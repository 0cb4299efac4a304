"""Reading a scenario: YAML file -> `--set` overrides -> schema -> cross-plug-in checks.

Validation happens once, here, at the edge: every error is a one-line :class:`ScenarioError`
naming the key path or file (exit code 2 in the CLI, no traceback).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedsim.scenario import KEY_PATH, Scenario, ScenarioError, format_errors


def read_raw(path: str | Path) -> dict[str, Any]:
    """A scenario file as a plain mapping (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of sections")
    return raw


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override (``a.b=value``), validate and check plug-in names; raise ScenarioError."""
    raw = read_raw(path)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_scenario(raw)


def validate_scenario(raw: dict[str, Any]) -> Scenario:
    """Validate a raw mapping into a Scenario; every error becomes one line naming its key path."""
    from fedsim.checks import check_plugins

    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(format_errors(exc)) from None
    return check_plugins(scenario)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``--set a.b.c=value`` to the raw mapping; the value is parsed as YAML.

    A number picks an entry of a list: ``defenses.0.params.sigma=0.05``."""
    key, sep, value = item.partition("=")
    shown = item if item.isprintable() else repr(item)  # an error stays one line
    if not sep or not re.fullmatch(KEY_PATH, key.strip()):
        raise ScenarioError(f"--set {shown}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ScenarioError(f"--set {shown}: the value is not valid YAML") from None
    set_path(raw, key.strip(), parsed)


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `value` at a dotted key path of a raw scenario, creating sections on the way."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError(f"{key}: '{'.'.join(parts[:i])}' has no entry {part}")
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(f"{key}: '{'.'.join(parts[:i])}' is not a section")
