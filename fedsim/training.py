"""The one local training loop, readable top to bottom: shuffle, batch, step; optional FedProx term.

Clients, server evaluation, membership shadows and the centralized reference all train and predict
here; `fedsim.training_plan.local_budget` is the one place that says how many steps a round takes. Batches come from
a DataLoader yielding (inputs, targets, local row indices), so that a defense can wrap the model,
optimizer and loader (DP-SGD through Opacus) without a second loop. Defenses reach into the loop
through `fedsim.training_plan.TrainingHook` only: this module knows nothing about them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fedsim.augment import BatchAugment
from fedsim.scenario import AugmentConfig, FederationConfig
from fedsim.tasks import Task
from fedsim.training_plan import Batch, TrainingHook, local_budget


class PermutationBatches(Sampler[list[int]]):
    """A fresh seeded permutation each epoch, cut into full batches (the ragged tail is dropped:
    norm layers dislike size-1 tails)."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator, *, batches: int | None = None) -> None:
        self.n, self.batch_size, self.rng = n, min(batch_size, n), rng
        self.batches = batches or max(1, n // self.batch_size)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(self.n)
        for b in range(self.batches):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


@dataclass(frozen=True)
class LocalResult:
    loss: float
    steps: int
    examples: int
    used: list[int]  # local rows that entered at least one batch, in first-use order


def make_optimizer(model: nn.Module, config: FederationConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def batch_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, rng: np.random.Generator, *,
                 batches: int | None = None) -> DataLoader:
    """(inputs, targets, local rows) in seeded permutation batches."""
    return DataLoader(TensorDataset(x, y, torch.arange(len(x))),
                      batch_sampler=PermutationBatches(len(x), batch_size, rng, batches=batches))


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    task: Task,
    config: FederationConfig,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
    batch_size: int | None = None,
    hooks: Sequence[TrainingHook] = (),
) -> LocalResult:
    """Train `model` in place for this round's `local_budget` over (x, y)."""
    budget = local_budget(config, len(x), batch_size=batch_size)
    loader = batch_loader(x, y, budget.batch_size, rng)
    return run_steps(model, make_optimizer(model, config), loader, budget.steps, task=task,
                     proximal_mu=proximal_mu, hooks=hooks, augment=_augment(config.augment, rng))


def _augment(config: AugmentConfig | None, rng: np.random.Generator) -> BatchAugment | None:
    """The batch views of `config`, seeded from `rng` (drawn only when augmenting, so that runs
    without it keep their random streams)."""
    return BatchAugment(config, seed=int(rng.integers(2**31))) if config else None


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    total_steps: int,
    *,
    task: Task,
    proximal_mu: float = 0.0,
    hooks: Sequence[TrainingHook] = (),
    augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> LocalResult:
    """`total_steps` optimizer steps over `loader` (restarted as needed), through the hooks; with
    `augment`, on random views of each batch (the hooks see the views: they are what is trained on)."""
    device = next(model.parameters()).device
    n = len(loader.dataset)  # type: ignore[arg-type]
    for hook in hooks:
        model, optimizer, loader = hook.wrap(model, optimizer, loader)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    model.train()
    losses: list[float] = []
    used: dict[int, None] = {}
    step = 0
    while step < total_steps:
        for xb, yb, ib in loader:
            if step == total_steps:
                break
            step += 1
            optimizer.zero_grad(set_to_none=True)
            if len(ib) == 0:  # a Poisson-sampled batch may be empty; the (noise-only) step still counts
                optimizer.step()
                continue
            used.update(dict.fromkeys(ib.tolist()))
            if augment is not None:
                xb, yb = augment(xb, yb)
            batch = Batch(xb.to(device), yb.to(device), ib)
            prediction = model(batch.x)
            loss = task.loss(prediction, batch.y)
            for hook in hooks:
                term = hook.loss_term(batch, prediction, model)
                if term is not None:
                    loss = loss + term
            if proximal_mu > 0:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            if not torch.isfinite(loss):
                raise FloatingPointError(f"local training diverged (loss {float(loss.detach())} at step {step}); "
                                         "lower federation.lr")
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            for hook in hooks:
                hook.after_step(step, model, batch)
    return LocalResult(loss=float(np.mean(losses)) if losses else float("nan"), steps=total_steps, examples=n,
                       used=list(used))


def one_batch_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: Task, batch_size: int, rng: np.random.Generator,
    hooks: Sequence[TrainingHook] = (), augment: AugmentConfig | None = None,
) -> tuple[dict[str, torch.Tensor], LocalResult]:
    """FedSGD: the gradient of the loss on one random batch (what a malicious server may ask for).

    Taken from one plain SGD step through the hooks, so that DP-SGD's per-sample clipping and noise
    shape the gradient exactly as they shape training (and `augment`, the client's views, too)."""
    loader = batch_loader(x, y, batch_size, rng, batches=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = run_steps(model, optimizer, loader, 1, task=task, hooks=hooks, augment=_augment(augment, rng))
    grads = {name: (p.grad.detach().cpu().clone() if p.grad is not None else torch.zeros_like(p, device="cpu"))
             for name, p in model.named_parameters()}
    return grads, result


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Predictions for all of x, in evaluation mode, batch by batch."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
