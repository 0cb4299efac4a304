"""Recipes: the training code a model owner submits to a data lake (setting `data_lake`).

A recipe runs inside the lake, on scans the owner may never read, and returns the tensors it asks
to export; the lake's export gates (defenses with `at_export`) decide what leaves. The honest
recipe trains the agreed network and exports its weights; a malicious one (e.g.
`compress_and_hide`, in fedsim.attacks.data_stealing) also hides the lake's scans in the export.
A recipe may be built in, `path/to/file.py:Class`, or come from the entry-point group
`fedsim.recipes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedsim.plugin import Configurable
from fedsim.registry import registry

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch
    from torch import nn

    from fedsim.scenario import FederationConfig
    from fedsim.tasks import Task
    from fedsim.training_plan import TrainingHook


@dataclass
class LakeRun:
    """What a recipe gets inside one lake: the agreed task, the training settings, a seed."""

    lake: int
    task: Task
    config: FederationConfig  # the lake's training budget (epochs, batch size, optimizer, lr)
    seed: int
    owner_state: dict[str, torch.Tensor] = field(default_factory=dict)  # what `prepare` made, shipped in with the code


class Recipe(Configurable):
    """Base of recipes: `train` the agreed `model` on the lake's (x, y) and return the export."""

    def check(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Before training: raise ValueError (one line naming `params.<key>`) when this recipe cannot
        work with the agreed `model` on scans of `input_shape` (C, *spatial)."""

    def prepare(self, owner_scans: Callable[[int], torch.Tensor], *, seed: int) -> dict[str, torch.Tensor]:
        """Outside the lakes, before they run: what the owner builds from `owner_scans(n)` (n scans of
        its own, never a lake's) and ships in with its code; it keeps a copy (the run folder's
        owner/state.safetensors, which its extraction reads). Nothing by default."""
        return {}

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, run: LakeRun) -> dict[str, torch.Tensor]:
        """Train inside the lake; return the tensors the owner asks to export, by name."""
        raise NotImplementedError

    def describe(self) -> dict:
        return self.params.model_dump(mode="json")


def train_agreed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, run: LakeRun,
                 hooks: Sequence[TrainingHook] = ()) -> dict[str, torch.Tensor]:
    """The agreed network trained as agreed (the lake's budget, its seed): an honest export's weights
    (with `hooks`, e.g. a loss term of the recipe's own, the same loop with that term added)."""
    import numpy as np

    from fedsim.training import train_local

    train_local(model, x, y, task=run.task, config=run.config, rng=np.random.default_rng(run.seed), hooks=hooks)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


RECIPES = registry("recipe", base=Recipe, group="fedsim.recipes")


@RECIPES.register("train_agreed")
class TrainAgreed(Recipe):
    """The honest recipe: train the agreed network, export its weights and nothing else."""

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, run: LakeRun) -> dict[str, torch.Tensor]:
        return train_agreed(model, x, y, run=run)
