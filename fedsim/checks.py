"""Cross-section checks of a validated scenario: the plug-ins it names exist, accept their `params`
and can work together, and every section it holds has an owner (run by `fedsim.loading`, so bad
input fails before any training). Each plug-in's params are parsed once here."""

from __future__ import annotations

from typing import Any

from fedsim.families import FAMILIES, AttackFamily, resolve_family
from fedsim.plugins import load_builtins
from fedsim.registry import PluginError, registry
from fedsim.scenario import PluginSpec, Scenario, ScenarioError, shown_key
from fedsim.settings.base import SETTINGS, Setting
from fedsim.tasks.needs import check_task_data

PLUGIN_FIELDS = {
    ("data", "dataset"): "dataset",
    ("task", "name"): "task",
    ("task", "model", "name"): "model",
    ("federation", "strategy"): "strategy",
}


def check_plugins(scenario: Scenario) -> Scenario:
    """Every plug-in the scenario names exists, accepts its params and fits this scenario; returns the
    scenario with the sections of its setting and families validated and their defaults filled in."""
    registries = load_builtins()
    for path, kind in PLUGIN_FIELDS.items():
        value: Any = scenario
        for part in path:
            value = getattr(value, part)
        try:
            registry(kind).check_name(value)
        except PluginError as exc:
            raise ScenarioError(f"{'.'.join(path)}: {exc}") from None
    _as_scenario_error("", check_task_data, scenario)  # a label only some datasets have
    check_data = getattr(registries["dataset"].get(scenario.data.dataset), "check_scenario", None)
    if check_data is not None:  # on-disk layouts: the folder holds matching files, sites match clients
        _as_scenario_error("", check_data, scenario)
    setting = _setting(scenario)
    families = _families(scenario, setting)
    sections = _sections(scenario, setting, families)
    lists = (("defenses", "defense", scenario.defenses), ("server.behaviours", "behaviour", scenario.server.behaviours))
    for where, kind, specs in lists:
        for i, spec in enumerate(specs):
            plugin, params = _resolve(registries[kind], spec, f"{where}.{i}")
            if kind == "defense":
                _check_defense(plugin, params, spec, i, scenario)
    return scenario.model_copy(update={"sections": sections})


def _resolve(reg: Any, spec: PluginSpec, where: str) -> tuple[Any, Any]:
    """The plug-in class of one list entry and its parsed params; errors name the entry."""
    try:
        plugin = reg.get(spec.name)
        params = plugin.parse(spec.params) if hasattr(plugin, "parse") else None
    except (PluginError, ValueError, TypeError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return plugin, params


def _setting(scenario: Scenario) -> type[Setting]:
    try:
        setting = SETTINGS.get(scenario.setting)
    except PluginError as exc:
        raise ScenarioError(f"setting: {exc}") from None
    _as_scenario_error("", setting.check_scenario, setting.parse_config(scenario), scenario)
    return setting


FamilyAttacks = dict[type[AttackFamily], list[tuple[int, PluginSpec, type]]]


def _families(scenario: Scenario, setting: type[Setting]) -> FamilyAttacks:
    """The family of every attack (checked against what the setting can produce), then each
    family's own checks."""
    from fedsim.attacks import ATTACKS

    groups: dict[type[AttackFamily], list[tuple[int, PluginSpec, type]]] = {}
    for i, spec in enumerate(scenario.attacks):
        plugin, _ = _resolve(ATTACKS, spec, f"attacks.{i}")
        if not hasattr(plugin, "family"):
            raise ScenarioError(f"attacks.{i}: {spec.name} names no attack family; subclass ReconstructionAttack "
                                "or MembershipAttack, or set `family`")
        try:
            family = resolve_family(plugin.family)
        except (PluginError, TypeError) as exc:
            raise ScenarioError(f"attacks.{i}: {spec.name}: {exc}") from None
        kinds = plugin.consumes or family.consumes
        if not kinds & setting.produces:
            raise ScenarioError(f"attacks.{i}: {spec.name} consumes {' or '.join(sorted(kinds))} observations, which "
                                f"setting '{scenario.setting}' cannot produce (it produces "
                                f"{', '.join(sorted(setting.produces)) or 'none'})")
        if plugin.threat.per_client_updates and not scenario.captures_updates:
            raise ScenarioError(f"attacks.{i}: {spec.name} needs per-client updates, but server.capture "
                                "is false, so the server keeps none")
        groups.setdefault(family, []).append((i, spec, plugin))
    for family, attacks in groups.items():
        _as_scenario_error("", family.check_scenario, family.parse_config(scenario), scenario, attacks)
    return groups


def _sections(scenario: Scenario, setting: type[Setting], families: dict[type[AttackFamily], Any]) -> dict[str, Any]:
    """Every top-level section that is not core belongs to the setting or to a family (registered,
    or one of this scenario's attacks'); each is returned validated, defaults filled in."""
    owners: dict[str, type[Setting] | type[AttackFamily]] = {}
    for owner in [setting, *(FAMILIES.get(n) for n in FAMILIES.registered()), *families]:
        if owner.section:
            owners.setdefault(owner.section, owner)
    for key in scenario.sections:
        if key not in owners:
            raise ScenarioError(f"{shown_key(key)}: unknown key")
    return {key: owner.parse_config(scenario).model_dump(mode="json") for key, owner in owners.items()}


def _check_defense(plugin: Any, params: Any, spec: PluginSpec, i: int, scenario: Scenario) -> None:
    """A defense listed twice when it may appear once, or one that cannot work in this scenario."""
    if plugin.once and sum(s.name == spec.name for s in scenario.defenses) > 1:
        raise ScenarioError(f"defenses.{i}: {spec.name} may be listed only once")
    _as_scenario_error(f"defenses.{i}: {spec.name}", plugin.check_scenario, params, scenario)


def _as_scenario_error(where: str, check: Any, *args: Any) -> None:
    """Run a plug-in's check; its ValueError becomes a one-line ScenarioError (prefixed by `where`)."""
    try:
        check(*args)
    except ScenarioError:
        raise
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}" if where else str(exc)) from None
