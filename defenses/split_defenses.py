"""A hospital's defenses in split inference (setting `split_inference`): model perturbation, Gaussian
noise on the weights and biases of the hospital-side layers (the seed's defense against model
inversion: each hospital draws its own noise and keeps it, so the server's copy of those layers no
longer matches the features it receives), and noise or dropout on the features sent at the cut (He
et al.'s follow-up found dropout at the cut trades privacy for accuracy better than noise). All cost
the deployed network's accuracy, which the setting measures through each hospital's defended layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedsim.defenses.base import DEFENSES, Defense

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


class _AtSplit(Defense):
    at_split: ClassVar[bool] = True


class SigmaParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: float = Field(gt=0, le=10, description="std of the Gaussian noise")


@DEFENSES.register("split_model_noise")
class SplitModelNoise(_AtSplit):
    """Gaussian noise of std `sigma` on every weight and bias of the hospital-side layers (private)."""

    Params = SigmaParams

    def transform_first(self, first: nn.Module, *, rng: np.random.Generator) -> nn.Module:
        import torch

        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        with torch.no_grad():  # the hospital's own copy (the setting hands each hospital one)
            for p in first.parameters():
                p.add_(self.params.sigma * torch.randn(p.shape, generator=gen))
        return first


@DEFENSES.register("split_feature_noise")
class SplitFeatureNoise(_AtSplit):
    """Gaussian noise on the features sent at the cut, of std `sigma` times each scan's root mean square."""

    Params = SigmaParams

    def transform_features(self, features: torch.Tensor, *, rng: np.random.Generator) -> torch.Tensor:
        import torch

        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        rms = features.pow(2).flatten(1).mean(1).sqrt().reshape(-1, *[1] * (features.dim() - 1))
        scale = self.params.sigma * rms
        return features + scale * torch.randn(features.shape, generator=gen)


class DropoutParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    p: float = Field(gt=0, lt=1, description="share of the feature values zeroed")


@DEFENSES.register("split_feature_dropout")
class SplitFeatureDropout(_AtSplit):
    """Dropout on the features sent at the cut: each value is zeroed with probability `p` (a fresh mask
    per scan), the rest scaled by 1 / (1 - p) so the server's layers see features of the same mean."""

    Params = DropoutParams

    def transform_features(self, features: torch.Tensor, *, rng: np.random.Generator) -> torch.Tensor:
        import torch

        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        keep = torch.rand(features.shape, generator=gen) >= self.params.p
        return features * keep / (1 - self.params.p)
