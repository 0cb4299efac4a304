"""Attack plug-ins (the `attacks:` list of a scenario). Built-in attacks register here."""

from attacks.base import ATTACKS, Attack

__all__ = ["ATTACKS", "Attack"]
