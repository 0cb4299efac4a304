"""Cross-section checks of a validated scenario: the plug-ins it names exist, accept their `params`,
and can work together (run by `validate_scenario`, so bad input fails before any training)."""

from __future__ import annotations

from typing import Any

from fedsim.registry import PluginError, load_builtins, registry
from fedsim.scenario import PluginSpec, Scenario, ScenarioError, parse_params

PLUGIN_FIELDS = {
    ("data", "dataset"): "dataset",
    ("task", "name"): "task",
    ("task", "model", "name"): "model",
    ("federation", "strategy"): "strategy",
}



def check_plugins(scenario: Scenario) -> None:
    """Every plug-in the scenario names exists, accepts its params and can work in this scenario."""
    registries = load_builtins()
    for path, kind in PLUGIN_FIELDS.items():
        value: Any = scenario
        for part in path:
            value = getattr(value, part)
        try:
            registry(kind).get(value)
        except PluginError as exc:
            raise ScenarioError(f"{'.'.join(path)}: {exc}") from None
    check_data = getattr(registries["dataset"].get(scenario.data.dataset), "check_scenario", None)
    if check_data is not None:  # on-disk layouts: the folder holds matching files, sites match clients
        try:
            check_data(scenario)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
    lists = (("attacks", "attack", scenario.attacks), ("defenses", "defense", scenario.defenses),
             ("server.behaviours", "behaviour", scenario.server.behaviours))
    for where, kind, specs in lists:
        for i, spec in enumerate(specs):
            try:
                plugin = registries[kind].get(spec.name)
                check = getattr(plugin, "check_params", None)
                if check is not None:
                    check(spec.params)
            except (PluginError, ValueError, TypeError) as exc:
                raise ScenarioError(f"{where}.{i}: {exc}") from None
            if kind == "defense":
                _check_defense(plugin, spec, i, scenario)
            threat = getattr(plugin, "threat", None)
            is_membership = kind == "attack" and hasattr(plugin, "membership_scores")
            if is_membership and threat.auxiliary and scenario.membership.aux_samples < 2:
                raise ScenarioError(f"attacks.{i}: {spec.name} needs leaked samples, but membership.aux_samples "
                                    f"is {scenario.membership.aux_samples}")
            if kind == "attack" and threat is not None and threat.per_client_updates and not scenario.captures_updates:
                raise ScenarioError(f"attacks.{i}: {spec.name} needs per-client updates, but server.capture "
                                    "is false, so the server keeps none")


def _check_defense(plugin: Any, spec: PluginSpec, i: int, scenario: Scenario) -> None:
    """A defense listed twice when it may appear once, or one that cannot work in this scenario."""
    if plugin.once and sum(s.name == spec.name for s in scenario.defenses) > 1:
        raise ScenarioError(f"defenses.{i}: {spec.name} may be listed only once")
    try:
        plugin.check_scenario(parse_params(plugin.Params, spec.params), scenario)
    except ValueError as exc:
        raise ScenarioError(f"defenses.{i}: {spec.name}: {exc}") from None
