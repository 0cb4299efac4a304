"""The Attack base class and its registry (YAML name, `path/to/file.py:Class`, or entry point).

An attack declares its threat model as class attributes; the observation layer will hand it only
what that threat model grants (DESIGN.md, "Threat model in code").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from fedsim.registry import registry


class Attack(ABC):
    """Base of attacker plug-ins. Subclasses set what they need and implement `run`."""

    needs_per_client_updates: bool = True
    knows_architecture: bool = True
    knows_client_hyperparameters: bool = False
    knows_labels: bool = False
    needs_auxiliary_samples: bool = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    @abstractmethod
    def run(self, observation: Any) -> dict[str, Any]:
        """Attack one observation; return JSON-serialisable results."""


ATTACKS = registry("attack", base=Attack, group="fedsim.attacks")
