"""The local training loop, readable top to bottom: shuffle, batch, step; optional FedProx term."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsim.scenario import FederationConfig
from fedsim.tasks import Task


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
) -> LocalResult:
    """Train for `local_steps` batches if set, else `local_epochs` passes over (x, y)."""
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    n, bs = len(x), min(batch_size or config.batch_size, len(x))
    batches_per_epoch = max(1, n // bs)  # drop the ragged last batch: norm layers dislike size-1 tails
    total_steps = config.local_steps or config.local_epochs * batches_per_epoch
    model.train()
    losses: list[float] = []
    used: dict[int, None] = {}
    order = np.empty(0, dtype=int)
    for step in range(total_steps):
        if step % batches_per_epoch == 0:
            order = rng.permutation(n)
        idx = order[(step % batches_per_epoch) * bs:][:bs]
        used.update(dict.fromkeys(idx.tolist()))
        xb, yb = x[idx].to(device), y[idx].to(device)
        loss = task.loss(model(xb), yb)
        if proximal_mu > 0:
            prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
            loss = loss + 0.5 * proximal_mu * prox
        if not torch.isfinite(loss):
            raise FloatingPointError(f"local training diverged (loss {float(loss.detach())} at step {step + 1}); "
                                     "lower federation.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return LocalResult(loss=float(np.mean(losses)), steps=total_steps, examples=n, used=list(used))


def one_batch_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: Task, batch_size: int, rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], list[int], float]:
    """FedSGD: the gradient of the loss on one random batch (what a malicious server may ask for)."""
    device = next(model.parameters()).device
    idx = rng.permutation(len(x))[: min(batch_size, len(x))]
    model.train()
    model.zero_grad(set_to_none=True)
    loss = task.loss(model(x[idx].to(device)), y[idx].to(device))
    loss.backward()
    grads = {name: p.grad.detach().cpu().clone() for name, p in model.named_parameters()}
    return grads, idx.tolist(), float(loss.detach())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Predictions for all of x, in evaluation mode, batch by batch."""
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
