"""Neurodegeneration diagnosis from a T1 volume or its central slice: a binary classifier with one
logit, so that its gradient has the same form as the brain-age regressor's (error x a label-free
derivative of the output), which the learned inversion and a minimax defense's surrogate rely on."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedsim.data.synthetic import Cohort
from fedsim.tasks.brain_age import BrainAgeSliceTask, BrainAgeTask
from fedsim.tasks.needs import NEEDS_LABEL


class DiagnosisTask(BrainAgeTask):
    """Disease / no disease (medial temporal and ventricular atrophy beyond ageing); binary
    cross-entropy on one logit; error rate and balanced accuracy (prevalence differs by site)."""

    primary_metric = "error_rate"
    baseline_name = "majority class"
    n_classes = 2

    def build_model(self) -> nn.Module:
        cfg = self.config.model
        prevalence = min(max(self.target_mean, 1e-3), 1 - 1e-3)  # the head starts at the prevalence's logit
        return self._model_cls()(channels=cfg.channels, dropout=cfg.dropout, spatial_dims=self.spatial_dims,
                                 out_bias=math.log(prevalence / (1 - prevalence)), out_scale=1.0,
                                 **self._model_kwargs())

    def tensors(self, cohort: Cohort, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = super().tensors(cohort, indices)
        return x, torch.from_numpy(self.targets(cohort)[indices].astype(np.int64))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(pred, target.to(pred.dtype))

    def metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """The same keys whatever the set holds (Flower averages clients' metrics key by key): the
        balanced accuracy is the mean recall over the classes present; no AUC, which one class lacks."""
        guess, y = (pred.detach() > 0).long().cpu(), target.long().cpu()
        error = float((guess != y).double().mean()) if len(y) else float("nan")
        recalls = [float((guess[y == k] == k).double().mean()) for k in (0, 1) if (y == k).any()]
        return {"error_rate": error, "accuracy": 1.0 - error,
                "balanced_accuracy": sum(recalls) / len(recalls) if recalls else float("nan")}

    def baseline(self, target_mean: float, test_target: torch.Tensor) -> dict[str, float]:
        """Always predicting the majority training class."""
        return self.metrics(torch.full(test_target.shape, 1.0 if target_mean >= 0.5 else -1.0), test_target)

    @staticmethod
    def targets(cohort: Cohort) -> np.ndarray:
        if cohort.diagnosis is None:
            raise ValueError(NEEDS_LABEL.format(task="diagnosis"))
        return cohort.diagnosis.astype(np.float64)


class DiagnosisSliceTask(DiagnosisTask, BrainAgeSliceTask):
    """The same diagnosis from the central axial slice (2D): ventricles, not the medial temporal lobes."""
