"""Pure tensor operations on a model update (a name -> tensor dict), shared by the update defenses
(`clip_update`, `model_noise`, `prune`) and the Flower client mods in `defenses.mods`.

Only floating-point tensors are touched; integer ones (e.g. BatchNorm's `num_batches_tracked`)
pass through as the update has them, since "noise" or "clipping" on a counter means nothing.
Every function returns a new dict and never modifies its inputs in place (unchanged tensors may be shared).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Tensors = dict[str, torch.Tensor]
Distribution = Literal["gaussian", "laplace"]


def _floats(d: Tensors) -> list[torch.Tensor]:
    return [v for v in d.values() if v.is_floating_point()]


def delta(update: Tensors, reference: Tensors) -> Tensors:
    """The client's change `update - reference`; non-float tensors are kept as the update has them."""
    return {k: v - reference[k].to(v) if v.is_floating_point() else v for k, v in update.items()}


def apply_delta(reference: Tensors, change: Tensors) -> Tensors:
    """`reference + change` (the inverse of `delta`); non-float tensors are taken from `change`."""
    return {k: reference[k].to(v) + v if v.is_floating_point() else v for k, v in change.items()}


def global_norm(d: Tensors) -> float:
    """The L2 norm of all float entries together, as if the update were one flat vector."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in _floats(d)))


def clip_by_global_norm(d: Tensors, max_norm: float) -> tuple[Tensors, float]:
    """Scale `d` by min(1, max_norm / ||d||) as in DP-FedAvg; returns (clipped, the norm before).

    One global norm, not one per tensor: DP's sensitivity bound is on the whole update."""
    norm = global_norm(d)
    if norm <= max_norm:
        return dict(d), norm
    factor = max_norm / norm
    return {k: v * factor if v.is_floating_point() else v for k, v in d.items()}, norm


def sample_noise(shape: torch.Size, std: float, generator: torch.Generator, distribution: Distribution = "gaussian",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Zero-mean noise of standard deviation `std` (Laplace with b = std / sqrt 2, so the std matches)."""
    if distribution == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64).mul_(std).to(dtype)
    if distribution == "laplace":  # the difference of two Exp(1) draws is Laplace(0, 1), std sqrt 2
        e1 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        e2 = torch.empty(shape, dtype=torch.float64).exponential_(generator=generator)
        return ((e1 - e2) * (std / math.sqrt(2.0))).to(dtype)
    raise ValueError(f"unknown noise distribution {distribution!r} (gaussian or laplace)")


def add_noise(d: Tensors, std: float, generator: torch.Generator, distribution: Distribution = "gaussian") -> Tensors:
    """`d` plus independent zero-mean noise of standard deviation `std` on every float entry."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return dict(d)
    return {k: v + sample_noise(v.shape, std, generator, distribution, v.dtype).to(v.device)
            if v.is_floating_point() else v for k, v in d.items()}


def _flat_abs(d: Tensors) -> torch.Tensor:
    floats = _floats(d)
    if not floats:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([v.detach().reshape(-1).abs().double().cpu() for v in floats])


def prune_smallest(d: Tensors, keep_fraction: float) -> Tensors:
    """Zero all but the round(keep_fraction * n) float entries of largest magnitude, across the whole
    update (global top-k, as in gradient-pruning defenses); ties go to the earlier entry, so the
    result is deterministic."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    flat = _flat_abs(d)
    k = round(keep_fraction * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    out, start = {}, 0
    for name, v in d.items():
        if not v.is_floating_point():
            out[name] = v
            continue
        mask = keep[start:start + v.numel()].reshape(v.shape).to(v.device)
        out[name] = torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device))
        start += v.numel()
    return out


def percentile_abs(d: Tensors, q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of |entry| over all float entries; 0 if none."""
    flat = _flat_abs(d)
    return float(np.percentile(flat.numpy(), q)) if flat.numel() else 0.0


def fraction_nonzero(d: Tensors) -> float:
    """Share of float entries that are not zero (what pruning leaves)."""
    flat = _flat_abs(d)
    return float((flat != 0).double().mean()) if flat.numel() else 0.0


def torch_generator(seed: int | None) -> torch.Generator:
    """A private torch generator: seeded when `seed` is given, from OS entropy otherwise."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed) % 2**63)
    return g
