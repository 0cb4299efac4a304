"""A multilayer perceptron over a clinical record's encoded columns: the tabular target model of
attribute inference (Fredrikson et al. attacked such models). ReLU layers (not in place, for
Opacus' per-sample hooks), optional dropout, one output per class logit; the output bias starts at
the training prevalence's logit, as the imaging classifiers' heads do."""

from __future__ import annotations

import torch
from torch import nn


class RecordMLP(nn.Module):
    """Hidden layers of `channels` widths with ReLU, then a linear output."""

    def __init__(self, *, in_features: int, channels: list[int] | tuple[int, ...] = (64, 64), dropout: float = 0.0,
                 out_bias: float = 0.0, out_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for width in channels:
            layers += [nn.Linear(prev, width), nn.ReLU(inplace=False)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(prev, out_channels)
        nn.init.constant_(self.head.bias, out_bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations: what a white-box attacker reads beside the output."""
        return self.hidden(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.embed(x))
        return out.squeeze(1) if out.shape[1] == 1 else out
