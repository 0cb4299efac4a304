"""The search loop shared by gradient and weight-update inversion.

A restart builds a candidate image (pixels or PCA coefficients) and labels, then minimises
match(simulate(x, y), observed) + tv * TV(x) + prior_pull * |x - prior|^2 with (signed) Adam. Each
iteration costs one forward, one double-backward through the simulated gradient and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedsim.attacks.gradient_inversion.parts import (
    PCAImage,
    PixelImage,
    match_objective,
    population_mean,
    total_variation,
)

Simulator = Callable[[torch.Tensor, torch.Tensor, bool], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class InversionConfig:
    """How to search; the defaults are Inverting Gradients (cosine, signed Adam, TV, step decay)."""

    objective: Literal["l2", "cosine", "abs_cosine"] = "cosine"
    iterations: int = 1000
    lr: float = 0.1
    signed: bool = True  # signed Adam (Inverting Gradients)
    lr_schedule: bool = True  # x0.1 at 3/8, 5/8 and 7/8 of the iterations
    tv: float = 1e-4  # total-variation weight (2D and 3D)
    restarts: int = 1  # the restart with the lowest final objective is kept
    prior_pull: float = 0.0  # L2 pull toward the prior (auxiliary mean) image
    parameterization: Literal["pixel", "pca"] = "pixel"  # pca: coefficients of a PCA of the auxiliary images
    n_components: int = 20
    label: Literal["known", "joint"] = "known"  # joint: optimise an unknown regression target too
    seed: int = 0


@dataclass
class InversionResult:
    """Reconstructed batch and what it cost."""

    images: torch.Tensor  # (B, C, *spatial)
    labels: torch.Tensor | None  # recovered (joint) or the known targets; None when label-free
    objective: float  # final objective of the kept restart
    iterations: int
    seconds: float




class _Labels(nn.Module):
    """Targets during the search: fixed (known), free (joint), or a label-free surrogate (|cosine|)."""

    def __init__(self, mode: str, start: torch.Tensor, *, learn: bool) -> None:
        super().__init__()
        start = start.detach().clone()
        self.register_buffer("start", start.float() if learn else start)
        # one optimiser unit ~ 10% of the target's magnitude, so ages (~60 y) and unit targets move alike
        self.scale = float(max(1.0, 0.1 * start.float().abs().mean().item()))
        self.offset = nn.Parameter(torch.zeros_like(self.start), requires_grad=learn)
        self.mode = mode

    def forward(self) -> torch.Tensor:
        return self.start + self.scale * self.offset if self.offset.requires_grad else self.start


def _make_labels(config: InversionConfig, labels: torch.Tensor | None, guess: Callable[[], torch.Tensor]) -> _Labels:
    if config.label == "joint":
        return _Labels("joint", labels if labels is not None else guess(), learn=True)
    if labels is not None:
        return _Labels("known", labels, learn=False)
    if config.objective == "abs_cosine":
        # any constant non-zero residual: at batch 1 the gradient's direction is ±∇f whatever y is
        pred = guess()
        return _Labels("surrogate", pred - 10.0 * max(1.0, pred.abs().mean().item()), learn=False)
    raise ValueError("labels are required unless label='joint' or objective='abs_cosine'")


def _make_image(config: InversionConfig, input_shape: Sequence[int], auxiliary: torch.Tensor | None,
                restart: int, gen: torch.Generator) -> nn.Module:
    """Where a restart starts: the auxiliary mean (restart 0) or noise around it / pure noise."""
    if config.parameterization == "pca":
        if auxiliary is None:
            raise ValueError("parameterization='pca' needs auxiliary images")
        return PCAImage(auxiliary, batch=input_shape[0], n_components=config.n_components,
                        start_noise=0.5 if restart else 0.0, generator=gen)
    noise = torch.randn(tuple(input_shape), generator=gen)
    if auxiliary is None:
        return PixelImage(noise)
    return PixelImage(population_mean(auxiliary, input_shape) + (0.5 * noise if restart else 0.0))


def _regularised(config: InversionConfig, x: torch.Tensor, prior: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    obj = match
    if config.tv:
        obj = obj + config.tv * total_variation(x)
    if config.prior_pull:
        obj = obj + config.prior_pull * (x - prior).pow(2).mean()
    return obj


def _schedule(config: InversionConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    if not config.lr_schedule:
        return None
    n = config.iterations
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3 * n // 8, 5 * n // 8, 7 * n // 8], gamma=0.1)


def _restart(simulate: Simulator, observed: Sequence[torch.Tensor], image: nn.Module, labels: _Labels,
             prior: torch.Tensor, config: InversionConfig, verbose: bool, tag: str) -> tuple[float, nn.Module]:
    """One optimisation run; returns its final objective (evaluated after the last step)."""
    leaves = [p for p in (*image.parameters(), *labels.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(leaves, lr=config.lr)
    sched = _schedule(config, opt)
    every = max(1, config.iterations // 10)
    for it in range(config.iterations):
        x, y = image(), labels()
        obj = _regularised(config, x, prior, match_objective(simulate(x, y, True), observed, config.objective))
        grads = torch.autograd.grad(obj, leaves)
        for leaf, g in zip(leaves, grads, strict=True):
            leaf.grad = g.sign() if config.signed else g
        opt.step()
        if sched is not None:
            sched.step()
        if verbose and (it % every == 0 or it == config.iterations - 1):
            print(f"[inversion{tag}] iter {it:5d}/{config.iterations} objective {obj.item():.6g}", flush=True)
    x, y = image().detach(), labels().detach()
    final = _regularised(config, x, prior, match_objective(simulate(x, y, False), observed, config.objective))
    return float(final.detach()), image


def run_search(simulate: Simulator, observed: Sequence[torch.Tensor], *, input_shape: Sequence[int],
               labels: torch.Tensor | None, guess_labels: Callable[[torch.Tensor], torch.Tensor],
               auxiliary: torch.Tensor | None, config: InversionConfig, verbose: bool = False) -> InversionResult:
    """All restarts; keeps the one with the lowest final objective."""
    if config.restarts < 1 or config.iterations < 0:
        raise ValueError("restarts must be >= 1 and iterations >= 0")
    t0 = time.perf_counter()
    observed = [o.detach().float() for o in observed]
    prior = population_mean(auxiliary, input_shape)
    best: tuple[float, torch.Tensor, torch.Tensor | None] | None = None
    for r in range(config.restarts):
        gen = torch.Generator().manual_seed(config.seed * 1009 + r)
        image = _make_image(config, input_shape, auxiliary, r, gen)
        lab = _make_labels(config, labels, lambda im=image: guess_labels(im().detach()))
        tag = f" restart {r + 1}/{config.restarts}" if config.restarts > 1 else ""
        value, image = _restart(simulate, observed, image, lab, prior, config, verbose, tag)
        if best is None or value < best[0]:
            best = (value, image().detach().clone(), None if lab.mode == "surrogate" else lab().detach().clone())
    assert best is not None
    return InversionResult(images=best[1], labels=best[2], objective=best[0],
                           iterations=config.iterations, seconds=time.perf_counter() - t0)
