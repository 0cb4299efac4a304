"""Defense plug-ins (the `defenses:` list of a scenario). Built-in defenses register here."""

from defenses.base import DEFENSES, Defense

__all__ = ["DEFENSES", "Defense"]
