"""The Defense base class and its registry.

A defense hooks at named points of a client's work: its data, its training step, or its outgoing
update (DESIGN.md, "Defenses"); each subclass overrides the hooks it needs, the rest pass through.
"""

from __future__ import annotations

import torch

from fedsim.plugin import Configurable
from fedsim.registry import registry


class Defense(Configurable):
    """Base of defense plug-ins; the default hooks change nothing.

    Hook wired so far: `transform_update`, applied by every client, in YAML order, to what it sends
    (trained weights, or a one-batch gradient when the server asked for one). The data and
    training-step hooks arrive with the built-in defenses (issue 5)."""

    def transform_update(self, update: dict[str, torch.Tensor], *, kind: str) -> dict[str, torch.Tensor]:
        """Change the outgoing update (`kind` is "weights" or "gradient") before it leaves the client."""
        return update


DEFENSES = registry("defense", base=Defense, group="fedsim.defenses")
