"""The built-in plug-ins, and the setting and attack families a scenario uses.

Importing the built-in modules fills every registry (they are light: heavy libraries load where a
plug-in runs). This module sits above the role packages, so the registries and bases below it
never import them.
"""

from __future__ import annotations

import importlib

from fedsim.families import AttackFamily, resolve_family
from fedsim.registry import Registry, all_registries
from fedsim.scenario import PluginSpec, Scenario
from fedsim.settings.base import SETTINGS, Setting

BUILTIN_MODULES = (
    "fedsim.data",
    "fedsim.data.datasets",
    "fedsim.data.partition",
    "fedsim.models.registry",
    "fedsim.tasks",
    "fedsim.server.strategies",
    "fedsim.server.behaviours",
    "fedsim.attacks",
    "fedsim.defenses",
    "fedsim.settings.recipes",
    "fedsim.settings.federated",
    "fedsim.settings.data_lake",
    "fedsim.settings.split_inference",
)


def load_builtins() -> dict[str, Registry]:
    """Import the built-in plug-in modules so that their registrations run; return all registries."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return all_registries()


def setting_of(scenario: Scenario) -> Setting:
    """The scenario's setting, built (its own section parsed)."""
    load_builtins()
    return SETTINGS.get(scenario.setting)(scenario)


def family_groups(scenario: Scenario) -> list[tuple[type[AttackFamily], list[PluginSpec]]]:
    """The families of the scenario's attacks, each with its attacks, in the order first listed."""
    from fedsim.attacks import ATTACKS

    load_builtins()
    groups: dict[type[AttackFamily], list[PluginSpec]] = {}
    for spec in scenario.attacks:
        groups.setdefault(resolve_family(ATTACKS.get(spec.name).family), []).append(spec)
    return list(groups.items())
