"""No scenario file, however broken, gives a traceback: hypothesis mutates every shipped scenario
(drops keys, changes types, pushes numbers out of range, adds unknown keys, swaps plug-in names,
malformed --set) and `fedsim validate`'s path (read, override, validate, outline) either accepts it
or raises one ScenarioError / PluginError of one line. 100 examples here, 1,000 in the slow suite."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.loading import apply_override, read_raw, validate_scenario
from fedsim.plugins import load_builtins, setting_of
from fedsim.registry import PluginError
from fedsim.scenario import ScenarioError
from tests.conftest import REPO

SCENARIOS = {p.name: read_raw(p) for p in sorted((REPO / "scenarios").glob("*.yaml"))}
PLUGIN_NAMES = sorted({name for reg in load_builtins().values() for name in reg.names()})
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(-3, 3), max_size=2), st.sampled_from(PLUGIN_NAMES),
)
SETS = st.one_of(
    st.text(max_size=30),  # anything at all after --set
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["federation.rounds", "data.shape", "attacks.0.name",
                                                        "defenses.0.params", "resources.num_gpus", "seed",
                                                        "membership.eval_size", "a..b", "task.model"]),
              st.text(max_size=12)),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out += _paths(child, (*prefix, key))
    return out


def _mutate(data: st.DataObject, raw: dict) -> None:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(raw)
        if not paths:
            return
        path = data.draw(st.sampled_from(paths), label="path")
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        key, kind = path[-1], data.draw(st.sampled_from(["drop", "replace", "unknown", "range", "plugin"]))
        if kind == "drop":
            parent.pop(key)
        elif kind == "replace":
            parent[key] = data.draw(VALUES, label="value")
        elif kind == "unknown" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=8), label="new key")] = data.draw(VALUES, label="value")
        elif kind == "range" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = parent[key] * data.draw(st.sampled_from([-1, 0, 10**9, -(10**9)]), label="factor")
        elif kind == "plugin" and key == "name":
            parent[key] = data.draw(st.sampled_from(PLUGIN_NAMES), label="plug-in")


KEY_FIRST = re.compile(r"^(--set\b|[^\s:]+: |[^\s:]*'[^']*'[^\s:]*: )")  # `federation.rounds: ...`, `--set ...`


def _check(data: st.DataObject) -> None:
    raw = copy.deepcopy(SCENARIOS[data.draw(st.sampled_from(sorted(SCENARIOS)), label="scenario")])
    _mutate(data, raw)
    try:
        for item in data.draw(st.lists(SETS, max_size=2), label="--set"):
            apply_override(raw, item)
        scenario = validate_scenario(raw)
        setting_of(scenario).outline(scenario)  # what `fedsim validate` prints for a valid file
    except (ScenarioError, PluginError) as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, repr(message)
        assert KEY_FIRST.match(message), f"names no key path first: {message!r}"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_broken_scenarios_are_one_line_errors(data: st.DataObject):
    _check(data)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_broken_scenarios_are_one_line_errors_at_length(data: st.DataObject):
    _check(data)
