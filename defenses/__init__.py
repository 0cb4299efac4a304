"""Defense plug-ins (the `defenses:` list of a scenario).

Every module of this package is imported here, so a built-in defense registers itself (with
`@DEFENSES.register("name")`) just by living in the package."""

import importlib
import pkgutil

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFENSES", "ClientRound", "Defense"]
