"""The plan of local training (`fedsim.training` runs it): how many steps and examples a round takes
(`local_budget`), and the hooks through which a defense reaches into the loop (`TrainingHook`).

Kept apart from the loop, without torch, so that plug-ins can use it at import time and listing
and validating scenarios stays quick."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from fedsim.scenario import FederationConfig


@dataclass(frozen=True)
class LocalBudget:
    """What one round of local training takes: the batch size, the optimizer steps, the examples."""

    batch_size: int  # the configured (or server-requested) batch, capped by the data
    batches_per_epoch: int  # full batches per pass (the ragged tail is dropped)
    steps: int  # optimizer steps this round
    examples: int  # local training examples (what a client reports for weighting)


def local_budget(config: FederationConfig, n_examples: int, *, batch_size: int | None = None) -> LocalBudget:
    """`local_steps` batches if set, else `local_epochs` passes; `batch_size` is the server's override."""
    size = max(1, min(batch_size or config.batch_size, n_examples))
    per_epoch = max(1, n_examples // size)
    return LocalBudget(batch_size=size, batches_per_epoch=per_epoch, examples=n_examples,
                       steps=config.local_steps or config.local_epochs * per_epoch)


class Batch(NamedTuple):
    x: torch.Tensor  # inputs, on the model's device
    y: torch.Tensor  # targets, on the model's device
    rows: torch.Tensor  # local row indices


class TrainingHook:
    """What a defense may do inside local training; every default leaves the loop unchanged.

    A learned defense trains its own modules here (in `after_step`, with its own optimizer); they
    are never part of the model, so nothing of them leaves the client in the update."""

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             loader: DataLoader) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        """Before the first step: wrap the model, optimizer and loader (the original parameters
        must still be the ones trained, since the client sends the original model's weights)."""
        return model, optimizer, loader

    def loss_term(self, batch: Batch, prediction: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
        """A term added to the task loss of this batch (None: nothing)."""
        return None

    def after_step(self, step: int, model: nn.Module, batch: Batch) -> None:
        """After each optimizer step (1-based `step`)."""
