"""The Defense base class and its registry.

A defense hooks at named points of a client's work: its data, its training step, or its outgoing
update (DESIGN.md, "Defenses"); each subclass overrides the hooks it needs, the rest pass through.
"""

from __future__ import annotations

from typing import Any

from fedsim.registry import registry


class Defense:
    """Base of defense plug-ins; the default hooks change nothing."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def transform_update(self, update: dict[str, Any]) -> dict[str, Any]:
        """Change the outgoing update (weights or gradient) before it leaves the client."""
        return update


DEFENSES = registry("defense", base=Defense, group="fedsim.defenses")
