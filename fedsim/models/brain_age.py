"""The brain-age CNN of the literature, made configurable.

Blocks of [Conv 3x3x3 -> Instance/GroupNorm -> ReLU (x `convs`) -> MaxPool] with channel widths from the YAML,
then global average pooling and a 1x1x1 conv head whose bias starts at the mean training age, so
round 0 predicts close to the mean. (Zero head weights would stall FedAvg: every client starts from
the same symmetric point and their head updates cancel in the average; measured on the quickstart.)
The head works in units of `out_scale` years (the training age SD), so an optimiser's step means the
same for the bias as for the weights. Norms are Instance/Group (Opacus rejects BatchNorm) and
activations are not in-place (Opacus' per-sample hooks need that).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn


def _norm(kind: str, channels: int) -> tuple[str, dict] | None:
    if kind == "none":
        return None
    if kind == "group":
        groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
        return ("group", {"num_groups": groups})
    return ("instance", {"affine": True})


class BrainAgeCNN(nn.Module):
    """3D (or 2D) CNN regressor: conv blocks, global pooling, 1x1x1 head; output bias = mean age."""

    def __init__(
        self,
        *,
        channels: list[int] | tuple[int, ...] = (8, 16, 32, 64),
        norm: str = "instance",
        dropout: float = 0.0,
        in_channels: int = 1,
        spatial_dims: int = 3,
        out_bias: float = 0.0,
        out_scale: float = 1.0,
        out_channels: int = 1,
        convs: int = 1,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            stack = []
            for _ in range(convs):  # convs > 1: a VGG-style block (He et al.'s CNN has 2), one module in `features`
                stack.append(Convolution(spatial_dims=spatial_dims, in_channels=prev, out_channels=width,
                                         kernel_size=3, norm=_norm(norm, width), act=("relu", {"inplace": False}),
                                         adn_ordering="NA"))
                prev = width
            blocks.append(stack[0] if convs == 1 else nn.Sequential(*stack))
            blocks.append(Pool["max", spatial_dims](kernel_size=2))
        self.features = nn.Sequential(*blocks)
        self.pool = Pool["adaptiveavg", spatial_dims](1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.head = conv(prev, out_channels, kernel_size=1)  # out_channels > 1: class logits
        self.out_scale = float(out_scale)
        nn.init.constant_(self.head.bias, out_bias / self.out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.features(x), after=len(self.features))

    @property
    def blocks(self) -> int:
        """Convolution blocks (each followed by a pooling): where split inference may cut."""
        return len(self.features) // 2

    def first(self, split: int) -> nn.Sequential:
        """The layers up to and including the `split`-th convolution block's activation (before its
        pooling): what a hospital runs in split inference; the rest is `rest(v, after=2 * split - 1)`."""
        return self.features[: 2 * split - 1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled features the head reads (one vector per scan): what a white-box
        attacker reads beside the output."""
        return self.pool(self.features(x)).flatten(1)

    def rest(self, v: torch.Tensor, *, after: int) -> torch.Tensor:
        """The network from `features[after]` on, given that layer's input `v`."""
        out = self.head(self.dropout(self.pool(self.features[after:](v)))).flatten(1)
        return (out.squeeze(1) if out.shape[1] == 1 else out) * self.out_scale
