"""A client's round of local training, replayed by an attacker on its own scans: what the learned
inversion fits on when a client sends trained weights (FedAvg) rather than one gradient.

The honest-but-curious server agreed the hyper-parameters with its clients (optimizer, learning
rate, local steps, batch size), so it can run the same steps, from the same global weights, on
pseudo-clients made of its own labelled scans, and record the weight change each would send. The
replay is functional (torch.func): every pseudo-client's weights and optimizer state advance side
by side under vmap, so a chunk of pseudo-clients costs about what one batched training step does.
What it does not replay: a defense's changes to the loop (DP-SGD, a learned perturbation), FedProx's
proximal term, and the client's own choice of which scans go into which step (a pseudo-client
visits its scans in a fixed order, which does not matter for its mixture of scans)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which fedsim's clients use


@dataclass(frozen=True)
class ClientSteps:
    """What a client does in a round, as the attacker knows it."""

    gradient: bool  # FedSGD: the client sends one batch's gradient, not a weight change
    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 1.0
    steps: int = 1
    batch_size: int = 1
    images: int = 1  # distinct scans the update mixes (fewer than steps x batch: the client cycles)
    momentum: float = 0.0
    weight_decay: float = 0.0

    @classmethod
    def of(cls, kind: str, *, images: int, batch_size: int | None, local_steps: int | None, lr: float | None,
           optimizer: Mapping[str, Any] | None) -> ClientSteps:
        """From an observation's kind and hyper-parameters (a weight update needs all of them)."""
        if kind == "gradient":
            return cls(gradient=True, batch_size=images, images=images)
        if not (batch_size and local_steps and lr and optimizer):
            raise PermissionError("replaying a weight update needs the client's optimizer, lr, steps and batch size")
        return cls(gradient=False, optimizer=str(optimizer["name"]), lr=float(lr), steps=int(local_steps),
                   batch_size=int(batch_size), images=images, momentum=float(optimizer.get("momentum", 0.0)),
                   weight_decay=float(optimizer.get("weight_decay", 0.0)))

    def schedule(self) -> np.ndarray:
        """(steps, batch) indices into a pseudo-client's scans: consecutive batches, cycling."""
        return (np.arange(self.steps * self.batch_size) % self.images).reshape(self.steps, self.batch_size)


def replay(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
           y: torch.Tensor, plan: ClientSteps, names: Sequence[str]) -> torch.Tensor:
    """The weight change (new - global) each pseudo-client sends, flattened in `names` order: (G, P)
    for scans x (G, images, C, *spatial) and targets y (G, images)."""
    if plan.gradient:
        raise ValueError("a FedSGD gradient is not replayed: its features are per-scan output gradients")
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    rest = {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in params}

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, {**rest, **p}, (xb,)), yb)

    per_client = vmap(grad(loss), in_dims=(0, 0, 0), randomness="same")
    g = len(x)
    current = {n: t.expand(g, *t.shape).clone() for n, t in params.items()}
    first = {n: torch.zeros_like(t) for n, t in current.items()}  # momentum buffer or Adam's first moment
    second = {n: torch.zeros_like(t) for n, t in current.items()}  # Adam's second moment
    was_training = model.training
    model.train()
    try:
        for step, batch in enumerate(plan.schedule(), start=1):
            idx = torch.as_tensor(batch)
            grads = per_client(current, x[:, idx], y[:, idx])
            for n in names:
                current[n] = _step(plan, step, current[n], grads[n], first[n], second[n])
    finally:
        model.train(was_training)
    return torch.cat([(current[n] - params[n]).flatten(1) for n in names], dim=1).float()


def _step(plan: ClientSteps, step: int, p: torch.Tensor, g: torch.Tensor, first: torch.Tensor,
          second: torch.Tensor) -> torch.Tensor:
    """One optimizer step as torch.optim.SGD / Adam take it (moments updated in place)."""
    if plan.weight_decay:
        g = g + plan.weight_decay * p
    if plan.optimizer == "sgd":
        if plan.momentum:
            first.mul_(plan.momentum if step > 1 else 0.0).add_(g)
            g = first
        return p - plan.lr * g
    if plan.optimizer != "adam":
        raise ValueError(f"cannot replay optimizer '{plan.optimizer}' (sgd or adam)")
    b1, b2 = ADAM_BETAS
    first.mul_(b1).add_(g, alpha=1 - b1)
    second.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (second.sqrt() / (1 - b2**step) ** 0.5).add_(ADAM_EPS)
    return p - plan.lr / (1 - b1**step) * first / denom
