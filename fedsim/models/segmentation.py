"""Segmentation networks: MONAI's UNet and SegResNet, configured from `task.model`.

Both are built with Instance/GroupNorm (Opacus rejects BatchNorm) and plain, not in-place ReLUs
(Opacus' per-sample hooks need that, and it has no per-sample gradient for PReLU, MONAI's UNet
default). `channels` means the UNet's widths per level (strides 2 between levels); SegResNet doubles
its widths itself, so it takes `channels[0]` as its first width and `len(channels)` as its depth.
The input side must be divisible by 2^(len(channels) - 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SegResNet, UNet
from torch import nn

from fedsim.models.brain_age import _norm

ACT = ("relu", {"inplace": False})


def _check_depth(name: str, channels: Sequence[int], minimum: int = 2) -> None:
    if len(channels) < minimum:
        raise ValueError(f"{name} needs at least {minimum} entries in task.model.channels "
                         f"(one per resolution level), got {list(channels)}")


class SegUNet(nn.Module):
    """MONAI UNet: one level per `channels` entry, stride-2 down/up sampling, residual units."""

    def __init__(
        self,
        *,
        channels: Sequence[int] = (16, 32, 64, 128),
        norm: str = "instance",
        dropout: float = 0.0,
        in_channels: int = 1,
        out_channels: int = 4,
        spatial_dims: int = 3,
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        _check_depth("unet", channels)
        # MONAI normalises after the last conv of every level; "none" leaves it out (e.g. for attacks)
        norm_spec = None if norm == "none" else _norm(norm, min(channels))
        self.net = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                        channels=tuple(channels), strides=(2,) * (len(channels) - 1),
                        num_res_units=num_res_units, act=ACT, norm=norm_spec, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SegResNetModel(nn.Module):
    """MONAI SegResNet (residual encoder, light decoder): first width `channels[0]`, depth `len(channels)`."""

    def __init__(
        self,
        *,
        channels: Sequence[int] = (8, 16, 32, 64),
        norm: str = "group",
        dropout: float = 0.0,
        in_channels: int = 1,
        out_channels: int = 4,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        _check_depth("segresnet", channels)
        if norm == "none":
            raise ValueError("segresnet needs task.model.norm 'instance' or 'group'")
        depth = len(channels)
        self.net = SegResNet(spatial_dims=spatial_dims, init_filters=channels[0], in_channels=in_channels,
                             out_channels=out_channels, dropout_prob=dropout or None, act=ACT,
                             norm=_norm(norm, channels[0]), blocks_down=(1, 2, 2, 4, 4, 4, 4, 4)[:depth],
                             blocks_up=(1,) * (depth - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
