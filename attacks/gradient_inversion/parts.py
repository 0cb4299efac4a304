"""Building blocks of gradient inversion: matching objectives, image priors and parameterisations.

Kept apart from the optimisation loop so each piece can be tested and swapped on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EPS = 1e-12


def match_objective(candidate: Sequence[torch.Tensor], observed: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """Distance between a candidate's gradient (or update) and the observed one, over all layers.

    l2 (DLG) is scale-sensitive, so it also recovers the magnitude, i.e. the residual f - y and hence
    an unknown regression target. cosine (Inverting Gradients) is scale-free and better conditioned.
    abs_cosine ignores the sign too: at batch 1 with MSE the gradient is 2(f - y)∇f, so its direction
    up to sign does not depend on the label at all.
    """
    if kind == "l2":
        return sum(((c - o) ** 2).sum() for c, o in zip(candidate, observed, strict=True))
    dot = sum((c * o).sum() for c, o in zip(candidate, observed, strict=True))
    norm_c = sum(c.pow(2).sum() for c in candidate).clamp_min(EPS).sqrt()
    norm_o = sum(o.pow(2).sum() for o in observed).clamp_min(EPS).sqrt()
    cos = dot / (norm_c * norm_o)
    if kind == "cosine":
        return 1.0 - cos
    if kind == "abs_cosine":
        return 1.0 - cos.abs()
    raise ValueError(f"unknown objective {kind!r} (l2, cosine or abs_cosine)")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbours along every spatial axis of (B, C, *spatial)."""
    return sum(x.diff(dim=d).abs().mean() for d in range(2, x.dim()))


class PixelImage(nn.Module):
    """Free voxels: the classic DLG / Inverting Gradients search space."""

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.pixels = nn.Parameter(start.clone())

    def forward(self) -> torch.Tensor:
        return self.pixels


class PCAImage(nn.Module):
    """Images as mean + coefficients x components of a PCA fitted on auxiliary scans.

    The search then stays on the population's manifold (brains look alike; pixel search drifts to
    images that match the gradient better than the truth does). Coefficients are in units of each
    component's standard deviation so one optimiser step means the same for every component.
    """

    def __init__(self, auxiliary: torch.Tensor, *, batch: int, n_components: int, start_noise: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        flat = auxiliary.detach().float().flatten(1)
        mean = flat.mean(0)
        k = min(n_components, flat.shape[0] - 1)
        if k < 1:
            raise ValueError("PCA needs at least 2 auxiliary images")
        _, s, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        scale = s[:k] / max(flat.shape[0] - 1, 1) ** 0.5
        self.register_buffer("mean", mean)
        self.register_buffer("basis", vh[:k] * scale[:, None])  # (k, D): std-scaled directions
        self.shape = (batch, *auxiliary.shape[1:])
        start = start_noise * torch.randn(batch, k, generator=generator) if start_noise else torch.zeros(batch, k)
        self.coef = nn.Parameter(start)

    def forward(self) -> torch.Tensor:
        return (self.mean + self.coef @ self.basis).reshape(self.shape)


def population_mean(auxiliary: torch.Tensor | None, input_shape: Sequence[int]) -> torch.Tensor:
    """The attacker's prior image broadcast to a batch (zeros without auxiliary data: z-scored mean)."""
    if auxiliary is None:
        return torch.zeros(tuple(input_shape))
    return auxiliary.detach().float().mean(0, keepdim=True).expand(tuple(input_shape)).contiguous()


def recover_labels_idlg(last_layer_weight_grad: torch.Tensor, *, batch_size: int = 1) -> torch.Tensor:
    """iDLG: the classes of a cross-entropy batch from the final Linear layer's weight gradient.

    For one sample that layer's gradient is (softmax - onehot) ⊗ h with h >= 0 after a ReLU, so only
    the true class's row is negative. For small batches of distinct classes the ``batch_size`` most
    negative rows are a heuristic guess (sorted by class index).
    """
    grad = last_layer_weight_grad.detach()
    rows = grad.flatten(1).sum(1) if grad.dim() > 1 else grad
    picked = torch.argsort(rows)[:batch_size]
    return picked.sort().values.long()
