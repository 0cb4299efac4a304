"""Sex classification from a T1 volume: a small classification head for attacks whose metric needs
class labels (iDLG label recovery reads the class straight out of a cross-entropy gradient)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.data.synthetic import Cohort
from fedsim.tasks.brain_age import BrainAgeTask


class SexClassificationTask(BrainAgeTask):
    """Female / male from the volume (head size and shape differ a little); cross-entropy, error rate."""

    primary_metric = "error_rate"
    baseline_name = "majority class"
    n_classes = 2

    def build_model(self) -> nn.Module:
        cfg = self.config.model
        return self._model_cls()(channels=cfg.channels, dropout=cfg.dropout, spatial_dims=self.spatial_dims,
                                 out_channels=self.n_classes, **self._model_kwargs())

    def tensors(self, cohort: Cohort, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = super().tensors(cohort, indices)
        return x, torch.from_numpy(cohort.sex[indices].astype(np.int64))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(pred, target)

    def metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        if pred.dim() == 1:  # a constant prediction of one class (the baseline)
            pred = nn.functional.one_hot(pred.round().long(), self.n_classes).float()
        error = float((pred.detach().argmax(1) != target).float().mean())
        return {"error_rate": error, "accuracy": 1.0 - error}

    def baseline(self, target_mean: float, test_target: torch.Tensor) -> dict[str, float]:
        """Always predicting the majority training class."""
        return self.metrics(torch.full(test_target.shape, float(target_mean >= 0.5)), test_target)

    @staticmethod
    def targets(cohort: Cohort) -> np.ndarray:
        return cohort.sex.astype(np.float64)
