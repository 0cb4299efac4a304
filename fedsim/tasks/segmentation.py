"""Segmentation: label every voxel, e.g. background / CSF / grey matter / white matter.

The cohort's ground-truth label maps are the targets, so the same task serves the synthetic MRI
(`synthetic_brain`) and CT (`synthetic_head_ct`) cohorts (CSF, GM, WM) and on-disk label maps, whose
classes come from the cohort's `label_names` (e.g. MSD's dataset.json). Loss is MONAI's DiceCELoss,
the headline metric the mean foreground Dice (higher is better; 0 for the all-background baseline).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch import nn

from fedsim.data.synthetic import Cohort
from fedsim.models.registry import MODELS
from fedsim.scenario import DataConfig, TaskConfig
from fedsim.tasks.base import Task
from fedsim.tasks.brain_age import zscore_volumes

SYNTHETIC_CLASSES = ("csf", "gm", "wm")  # labels 1, 2, 3 of the synthetic cohorts; 0 is background


def class_names(cohort: Cohort) -> tuple[str, ...]:
    """Foreground class names for labels 1..K: the cohort's own `label_names` where it has that field
    (on-disk data; unnamed ids become class_<k>), else the synthetic cohorts' CSF / GM / WM."""
    if not hasattr(cohort, "label_names"):
        return SYNTHETIC_CLASSES
    names = {int(k): str(v) for k, v in (cohort.label_names or {}).items()}
    top = max([1, int(cohort.labels.max(initial=0)), *names])
    return tuple(_metric_name(names.get(k, ""), k) for k in range(1, top + 1))


def _metric_name(name: str, label: int) -> str:
    """'Left Atrium' -> 'left_atrium' (becomes dice_left_atrium); class_<label> when unnamed."""
    return re.sub(r"\W+", "_", name.lower()).strip("_") or f"class_{label}"


class SegmentationTask(Task):
    """Voxel-wise segmentation of a 3D volume (synthetic: CSF / GM / WM) with a MONAI UNet or SegResNet."""

    primary_metric = "dice"
    spatial_dims = 3
    baseline_name = "all background"
    # labels 1.. (0 is background); set from the cohort by `tensors`, which the runner and every
    # client call before building a model, so all agree on the output channels
    class_names: tuple[str, ...] = SYNTHETIC_CLASSES

    def __init__(self, *, config: TaskConfig, target_mean: float = 0.0, target_std: float = 1.0,
                 data: DataConfig | None = None) -> None:
        super().__init__(config=config, target_mean=target_mean, target_std=target_std, data=data)
        self._loss = DiceCELoss(to_onehot_y=True, softmax=True)

    @property
    def n_classes(self) -> int:
        """Output channels: background plus one per tissue."""
        return len(self.class_names) + 1

    def build_model(self) -> nn.Module:
        cfg = self.config.model
        return MODELS.get(cfg.name)(channels=cfg.channels, norm=cfg.norm, dropout=cfg.dropout,
                                    in_channels=1, out_channels=self.n_classes, spatial_dims=self.spatial_dims)

    def tensors(self, cohort: Cohort, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Z-scored images (N, 1, *spatial) float32 and label maps (N, 1, *spatial) int64.

        Labels keep their channel axis: DiceCELoss one-hot encodes along it (to_onehot_y). The task's
        classes are taken from the whole cohort here, so every subset gives the same number."""
        self.class_names = class_names(cohort)
        x = zscore_volumes(self.images(cohort.images, indices))[:, None]
        y = self.images(cohort.labels, indices).astype(np.int64)[:, None]
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def images(self, volumes: np.ndarray, indices: list[int]) -> np.ndarray:
        """The network's inputs (or label maps) of the rows: whole volumes here."""
        return volumes[indices]

    def labelled(self, cohort: Cohort, indices: list[int]) -> bool:
        """Some foreground in the rows' label maps (brain-age sets come with all-zero maps)."""
        return bool(self.images(cohort.labels, indices).any())

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(pred, target)

    def metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Per tissue the mean over cases of each case's Dice; `dice` their mean (the headline number).

        A tissue absent from a case's ground truth does not count for that case (MONAI's ignore_empty)."""
        labels = target.reshape(target.shape[0], *target.shape[-self.spatial_dims:])
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)  # nan: tissue absent
        per_case = dice(self._one_hot(pred.detach().argmax(1)), self._one_hot(labels))
        per_class = [float(v) for v in torch.nanmean(per_case, dim=0)]
        scores = {f"dice_{name}": v for name, v in zip(self.class_names, per_class, strict=True)}
        present = [v for v in per_class if not math.isnan(v)]
        scores["dice"] = float(np.mean(present)) if present else float("nan")
        scores["loss"] = float(self.loss(pred.detach().float(), labels[:, None].long()))
        return scores

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, *spatial) class indices -> (N, C, *spatial), the layout DiceMetric wants."""
        return nn.functional.one_hot(labels.long(), self.n_classes).movedim(-1, 1).float()

    def baseline(self, target_mean: float, test_target: torch.Tensor) -> dict[str, float]:
        """Labelling every voxel background: Dice 0 for every tissue."""
        shape = (test_target.shape[0], self.n_classes, *test_target.shape[-self.spatial_dims:])
        logits = torch.zeros(shape)
        logits[:, 0] = 1.0
        return self.metrics(logits, test_target)

    @staticmethod
    def targets(cohort: Cohort) -> np.ndarray:
        """Zeros: the runner summarises targets as a mean/std to set up regression heads, which a
        segmentation network does not have; zeros make that summary harmless (mean 0, std 1)."""
        return np.zeros(len(cohort), dtype=np.float64)


class SegmentationSliceTask(SegmentationTask):
    """The same tissues on the central axial slice (2D UNet): the scale of the 2D literature, where
    a network holds many more of its training images than a 3D one."""

    spatial_dims = 2

    def images(self, volumes: np.ndarray, indices: list[int]) -> np.ndarray:
        return volumes[indices][..., volumes.shape[-1] // 2]
