"""The small sigmoid CNN of the gradient-inversion literature (DLG, iDLG, Inverting Gradients), in 2D or 3D.

Three 5x5(x5) convolutions (strides 2, 2, 1) with sigmoid activations and no global pooling, then a
linear age head: the kind of network on which single-image gradient inversion is known to work.
Comparing it with `brain_age_cnn` (global average pooling) shows how much the architecture decides
leakage. Feature maps are pooled to a fixed `grid` so the head does not depend on the input size
(identity for 32-voxel inputs).
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    """Sigmoid LeNet-style regressor without global pooling (leaks spatial detail through its gradient)."""

    def __init__(
        self,
        *,
        channels: list[int] | tuple[int, ...] = (12, 12, 12),
        in_channels: int = 1,
        spatial_dims: int = 3,
        out_bias: float = 0.0,
        out_scale: float = 1.0,
        grid: int = 8,
        dropout: float = 0.0,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        pool = nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(channels):
            layers += [conv(prev, width, kernel_size=5, stride=2 if i < 2 else 1, padding=2), nn.Sigmoid()]
            prev = width
        self.features = nn.Sequential(*layers, pool(grid), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(prev * grid**spatial_dims, out_channels)  # out_channels > 1: class logits
        self.out_scale = float(out_scale)
        nn.init.constant_(self.head.bias, out_bias / self.out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return (out.squeeze(1) if out.shape[1] == 1 else out) * self.out_scale
