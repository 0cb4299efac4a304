"""Defense plug-ins (the `defenses:` list of a scenario).

Every plug-in module of this package is imported here, so a built-in defense registers itself (with
`@DEFENSES.register("name")`) just by living in the package. `update_ops` (tensor helpers), `mods`
(Flower client mods) and `latent_modules` (the latent defense's networks) are not plug-ins, and
load only where they are used."""

import importlib
import pkgutil

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

_NOT_PLUGINS = {"base", "update_ops", "mods", "latent_modules"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_PLUGINS:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFENSES", "ClientRound", "Defense"]
