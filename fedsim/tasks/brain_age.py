"""Brain-age regression: predict chronological age (years) from a 3D T1 volume."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch import nn

from fedsim.data.synthetic import Cohort
from fedsim.models.registry import MODELS
from fedsim.tasks.base import Task


def zscore_volumes(images: np.ndarray) -> np.ndarray:
    """Z-score each volume on its own, as the brain-age literature does (removes site gain/offset)."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    mean = flat.mean(axis=1, keepdims=True)
    std = flat.std(axis=1, keepdims=True) + 1e-6
    return ((flat - mean) / std).reshape(images.shape)


class BrainAgeTask(Task):
    """Age regression, MSE loss, MAE in years as the headline metric."""

    primary_metric = "mae"
    spatial_dims = 3

    def _model_cls(self) -> type[nn.Module]:
        return MODELS.get(self.config.model.name)

    def build_model(self) -> nn.Module:
        cfg = self.config.model
        model_cls = self._model_cls()
        return model_cls(channels=cfg.channels, dropout=cfg.dropout, out_bias=self.target_mean,
                         out_scale=self.target_std, spatial_dims=self.spatial_dims, **self._model_kwargs())

    def _model_kwargs(self) -> dict:
        """What only some networks take: lenet has no norm and a single convolution per layer."""
        cfg = self.config.model
        takes_norm = "norm" in inspect.signature(self._model_cls()).parameters
        return ({"norm": cfg.norm} if takes_norm else {}) | ({"convs": cfg.convs} if cfg.convs != 1 else {})

    def images(self, cohort: Cohort, indices: list[int]) -> np.ndarray:
        """The network's input images before normalisation: whole volumes here."""
        return cohort.images[indices]

    def tensors(self, cohort: Cohort, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = zscore_volumes(self.images(cohort, indices))[:, None]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(cohort.age[indices].astype(np.float32))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(pred, target)

    def metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        err = (pred.detach().float() - target.float())
        return {"mae": float(err.abs().mean()), "mse": float((err**2).mean())}

    @staticmethod
    def targets(cohort: Cohort) -> np.ndarray:
        return cohort.age.astype(np.float64)


class BrainAgeSliceTask(BrainAgeTask):
    """Age from the central axial slice (2D): the same task at the scale of the 2D attack literature."""

    spatial_dims = 2
    slices_of_volumes = True

    def images(self, cohort: Cohort, indices: list[int], *, offset: int = 0) -> np.ndarray:
        return cohort.images[indices][..., cohort.images.shape[-1] // 2 + offset]

    def neighbour_slices(self, cohort: Cohort, indices: list[int], spread: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' central slices, then the slices `spread` either side, preprocessed as the central
        ones (for an attacker that holds whole volumes: other anatomy, which shifts do not add)."""
        depth = cohort.images.shape[-1]
        if not 0 <= spread < depth // 2:
            raise ValueError(f"spread: {spread} slices either side of the centre do not fit in a depth of {depth}")
        _, y = self.tensors(cohort, indices)
        offsets = [0, *[sign * k for k in range(1, spread + 1) for sign in (-1, 1)]]
        x = np.concatenate([zscore_volumes(self.images(cohort, indices, offset=o))[:, None] for o in offsets])
        return torch.from_numpy(np.ascontiguousarray(x)), y.repeat(len(offsets))
