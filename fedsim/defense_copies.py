"""An attacker's copies of the clients' defenses (Kerckhoffs's principle: it knows their names and
settings, not a client's private state). Built here, on the top floor, where attacks and defenses
may meet; attacks see them only as `attacks.base.DefenseCopy`."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING

from fedsim.attacks.base import DefenseCopy
from fedsim.defenses.base import DEFENSES, ClientRound, Defense
from fedsim.seeding import derive_seed

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch
    from torch import nn

    from fedsim.scenario import FederationConfig, Scenario
    from fedsim.tasks import Task


def defense_copies(scenario: Scenario, task: Task) -> list[DefenseCopy]:
    """Fresh copies of the scenario's defenses, each with randomness of the attacker's own."""
    import numpy as np

    out = []
    for i, spec in enumerate(scenario.defenses):
        defense = DEFENSES.get(spec.name)(**spec.params)
        rng = np.random.default_rng(derive_seed(scenario.seed, "attacker's defense copy", i))
        kinds = tuple(kind for kind in ("gradient", "weights") if defense.simulated_sender(kind) is not None)
        sender = defense.simulated_sender(kinds[0]) if kinds else None
        out.append(DefenseCopy(
            name=spec.key, settings=f"{spec.name}{json.dumps(spec.params, sort_keys=True)}",
            send=_sender(sender, task, scenario, rng) if sender else None, kinds=kinds,
            train_shown=_trainer(defense, task, scenario) if defense.changes_images else None))
    return out


def _sender(sender: Callable[..., dict[str, torch.Tensor]], task: Task, scenario: Scenario, rng: np.random.Generator):
    def send(update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ctx = ClientRound(client=-1, server_round=0, task=task, config=scenario.federation, rng=rng)
        return sender(update, ctx)

    return send


def train_copy(defense: Defense, model: nn.Module, scans: torch.Tensor, targets: torch.Tensor, *, task: Task,
               config: FederationConfig, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Train an image-changing defense's copy as a client trains it (its hook, `config`'s budget over
    the attacker's scans, from a copy of the global weights); scans -> the images it shows the model."""
    import numpy as np

    from fedsim.training import train_local

    ctx = ClientRound(client=-1, server_round=1, task=task, config=config, rng=np.random.default_rng(seed))
    train_local(copy.deepcopy(model), scans, targets, task=task, rng=np.random.default_rng(seed + 1),
                config=config, hooks=[defense.training_hook(ctx)])
    return defense.shown


def _trainer(defense: Defense, task: Task, scenario: Scenario):
    def train_shown(model: nn.Module, scans: torch.Tensor, targets: torch.Tensor, *, batch_size: int, epochs: int,
                    seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
        config = scenario.federation.model_copy(update={"local_epochs": epochs, "local_steps": None,
                                                        "batch_size": batch_size})
        return train_copy(defense, model, scans, targets, task=task, config=config, seed=seed)

    return train_shown
