"""Weights that are the data (Song, Ristenpart and Shmatikov, CCS 2017): a term added to the agreed
network's training loss makes its parameters, taken in sorted-name order, carry the lake's scans.

- correlated value encoding: -weight x Pearson(theta, s), s the z-scored voxels of as many scans as
  there are parameters; decoded by z-scoring each scan's run of parameters (the owner maximises
  a positive correlation, so it knows the sign);
- sign encoding: weight x mean(relu(-theta * s)), s in {-1, +1} the bits of each voxel quantised
  to `bits` over a fixed z-score range; decoded from the parameters' signs.

Both change the agreed weights themselves (a utility cost, which `weight` trades against what
leaks), leave with exactly the agreed entries, and survive half precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedsim.attacks.data_stealing import stego
from fedsim.training_plan import TrainingHook

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.training_plan import Batch

SIGN_RANGE = (-3.0, 5.0)  # the z-scored voxel values the sign encoding quantises (brain MRI and CT)


def parameter_names(model: nn.Module) -> list[str]:
    """The parameters that carry the scans, in sorted-name order (owner and recipe agree on it)."""
    return sorted(name for name, _ in model.named_parameters())


def capacity(model: nn.Module, voxels: int, symbols_per_voxel: int = 1) -> int:
    """How many scans of `voxels` the parameters hold at `symbols_per_voxel` parameters each."""
    return sum(p.numel() for p in model.parameters()) // (voxels * symbols_per_voxel)


def secret(x: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
    """What the parameters are trained to carry for scans `x`: voxel values, or signs of their bits."""
    import torch

    flat = x.flatten(1).float()
    if kind == "correlated":
        return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp(min=1e-6)).reshape(-1)
    lo, hi = SIGN_RANGE
    levels = torch.round((flat.clamp(lo, hi) - lo) / (hi - lo) * (2**bits - 1))
    return stego.to_bits(levels.reshape(-1), bits).float() * 2 - 1


class EncodingHook(TrainingHook):
    """Adds the encoding's term to every training batch's loss."""

    def __init__(self, target: torch.Tensor, kind: str, weight: float) -> None:
        self.target, self.kind, self.weight = target, kind, weight

    def loss_term(self, batch: Batch, prediction: torch.Tensor, model: nn.Module) -> torch.Tensor:
        import torch

        params = dict(model.named_parameters())
        theta = torch.cat([params[n].reshape(-1) for n in sorted(params)])[: len(self.target)]
        if self.target.device != theta.device:
            self.target = self.target.to(theta.device)
        if self.kind == "correlated":
            t, s = theta - theta.mean(), self.target - self.target.mean()
            return -self.weight * (t * s).sum() / (t.norm() * s.norm()).clamp(min=1e-12)
        return self.weight * torch.relu(-theta * self.target).mean()


def decode(tensors: dict[str, torch.Tensor], names: Sequence[str], n: int, input_shape: tuple[int, ...],
           kind: str, bits: int) -> torch.Tensor:
    """The `n` scans of `input_shape` (C, *spatial) that the parameters `names` of `tensors` carry."""
    import torch

    voxels = math.prod(input_shape)
    per_scan = voxels * (bits if kind == "sign" else 1)
    missing = [k for k in names if k not in tensors]
    if missing:
        raise ValueError(f"the export lacks the agreed entry {missing[0]}")
    theta = torch.cat([tensors[k].float().reshape(-1) for k in names])[: n * per_scan]
    if kind == "correlated":
        runs = theta.reshape(n, voxels)
        images = (runs - runs.mean(1, keepdim=True)) / runs.std(1, keepdim=True).clamp(min=1e-12)
    else:
        lo, hi = SIGN_RANGE
        levels = stego.from_bits(theta > 0, bits).float().reshape(n, voxels)
        images = lo + levels / (2**bits - 1) * (hi - lo)
    return images.reshape(n, *input_shape)
