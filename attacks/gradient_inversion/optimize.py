"""Optimisation-based inversion of what a client sends: a FedSGD gradient or a FedAvg weight update.

The attacker (an honest-but-curious server) knows the architecture and the global weights it sent.
It searches for inputs whose simulated gradient / local training update matches the observed one
(DLG: l2; Inverting Gradients: cosine + TV with signed Adam; |cosine| needs no label at batch 1).
A PCA prior fitted on auxiliary scans keeps the search on the population's manifold, which is the
only thing measured to help on 3D brains (docs: gradient-inversion-3d notes).

The model's parameters are never modified: everything runs through ``torch.func.functional_call``
on detached copies, and only the candidate inputs (and labels) receive gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from fedsim.attacks.gradient_inversion.parts import recover_labels_idlg
from fedsim.attacks.gradient_inversion.search import InversionConfig, InversionResult, Simulator, run_search

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _frozen_state(model: nn.Module, state: Mapping[str, torch.Tensor] | None, names: set[str]) -> dict:
    """Buffers and non-trainable parameters (from ``state`` when given), detached."""
    source = dict(model.named_buffers()) | {n: p for n, p in model.named_parameters() if n not in names}
    if state is not None:
        source = {n: state.get(n, t) for n, t in source.items()}
    return {n: t.detach() for n, t in source.items()}


def gradients_of(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The FedSGD observation a client would send: d loss / d trainable parameters, in model order."""
    params = [p for _, p in _trainable(model)]
    loss = loss_fn(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def _gradient_simulator(model: nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor] | None) -> Simulator:
    """Candidate (x, y) -> its gradient at the global weights, differentiable in x and y."""
    named = _trainable(model)
    names = [n for n, _ in named]
    src = dict(named) if state is None else {n: state[n] for n in names}
    params = {n: src[n].detach().clone().requires_grad_(True) for n in names}
    frozen = _frozen_state(model, state, set(names))

    def simulate(x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> Sequence[torch.Tensor]:
        out = functional_call(model, {**params, **frozen}, (x,))
        return torch.autograd.grad(loss_fn(out, y), list(params.values()), create_graph=create_graph)

    return simulate


def _step_indices(step: int, batch_size: int, n: int) -> torch.Tensor | slice:
    """Which candidates local step ``step`` used: the whole batch, or the next ones cyclically."""
    if batch_size >= n:
        return slice(None)
    return torch.arange(step * batch_size, (step + 1) * batch_size) % n


def _update_simulator(
    model: nn.Module, loss_fn: LossFn, global_state: Mapping[str, torch.Tensor], *,
    local_steps: int, lr: float, batch_size: int,
) -> Simulator:
    """Candidate (x, y) -> the weight change of ``local_steps`` plain-SGD steps, differentiably."""
    names = [n for n, _ in _trainable(model)]
    start = {n: global_state[n].detach().clone().float().requires_grad_(True) for n in names}
    frozen = _frozen_state(model, global_state, set(names))

    def simulate(x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> Sequence[torch.Tensor]:
        params = dict(start)
        for step in range(local_steps):
            idx = _step_indices(step, batch_size, x.shape[0])
            out = functional_call(model, {**params, **frozen}, (x[idx],))
            grads = torch.autograd.grad(loss_fn(out, y[idx]), list(params.values()), create_graph=create_graph)
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        return [params[n] - start[n] for n in names]

    return simulate


def _predict(model: nn.Module, state: Mapping[str, torch.Tensor] | None, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if state is None:
            return model(x).detach()
        return functional_call(model, {n: t.detach() for n, t in state.items()}, (x,)).detach()




def invert_gradient(
    model: nn.Module, loss_fn: LossFn, observed_grads: Sequence[torch.Tensor], *,
    input_shape: Sequence[int], labels: torch.Tensor | None = None, auxiliary: torch.Tensor | None = None,
    config: InversionConfig = InversionConfig(), verbose: bool = False,
) -> InversionResult:
    """Reconstruct a batch of shape ``input_shape`` from its FedSGD gradient (DLG / Inverting Gradients).

    ``observed_grads`` are in the order of the model's trainable parameters (as ``gradients_of``
    returns them); the model's current weights are the global weights the gradient was taken at.
    ``auxiliary`` (N, C, *spatial): attacker-held images for the prior / PCA, disjoint from victims.
    """
    simulate = _gradient_simulator(model, loss_fn, None)
    return run_search(simulate, observed_grads, input_shape=input_shape, labels=labels,
                      guess_labels=lambda x: _predict(model, None, x), auxiliary=auxiliary,
                      config=config, verbose=verbose)


def invert_weight_update(
    model: nn.Module, loss_fn: LossFn, global_state: Mapping[str, torch.Tensor],
    updated_state: Mapping[str, torch.Tensor], *, input_shape: Sequence[int], local_steps: int, lr: float,
    batch_size: int, labels: torch.Tensor | None = None, auxiliary: torch.Tensor | None = None,
    config: InversionConfig = InversionConfig(), verbose: bool = False,
) -> InversionResult:
    """Reconstruct a client's data from its FedAvg update (``updated_state - global_state``).

    The client is simulated as ``local_steps`` plain-SGD steps with learning rate ``lr`` over mini-
    batches of ``batch_size`` taken cyclically from the ``input_shape[0]`` candidates. Only trainable
    parameters are compared; buffers come from ``global_state``.
    """
    if local_steps < 1 or batch_size < 1:
        raise ValueError("local_steps and batch_size must be >= 1")
    names = [n for n, _ in _trainable(model)]
    observed = [(updated_state[n].detach().float() - global_state[n].detach().float()) for n in names]
    simulate = _update_simulator(model, loss_fn, global_state, local_steps=local_steps, lr=lr,
                                 batch_size=batch_size)
    return run_search(simulate, observed, input_shape=input_shape, labels=labels,
                      guess_labels=lambda x: _predict(model, global_state, x), auxiliary=auxiliary,
                      config=config, verbose=verbose)


__all__ = ["InversionConfig", "InversionResult", "gradients_of", "invert_gradient", "invert_weight_update",
           "recover_labels_idlg"]
