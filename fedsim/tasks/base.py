"""The Task base class: everything that differs between learning problems, and nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from fedsim.registry import registry

if TYPE_CHECKING:  # a task's module imports torch; the base stays light for `fedsim validate`
    import numpy as np
    import torch
    from torch import nn

    from fedsim.data.synthetic import Cohort
    from fedsim.scenario import DataConfig, TaskConfig


class Task(ABC):
    """Builds the model and turns cohort rows into tensors; scores predictions.

    `target_mean` / `target_std` summarise the training targets; the server and clients agree on
    them before training (they initialise and scale a regression head)."""

    primary_metric: str = "loss"
    slices_of_volumes: ClassVar[bool] = False  # inputs are one axial slice of each volume (`neighbour_slices`)
    baseline_name: str = "predict the mean"  # what `baseline` does, for logs and reports

    def __init__(self, *, config: TaskConfig, target_mean: float, target_std: float = 1.0,
                 data: DataConfig | None = None) -> None:
        self.config = config
        self.target_mean = target_mean
        self.target_std = target_std
        self.data = data  # the scenario's data section (a tabular task reads its table's columns from it)

    @classmethod
    def target_values(cls, cohort: Cohort, config: TaskConfig) -> np.ndarray:
        """The raw target of every cohort row for this task configuration (`targets` unless the
        configuration picks the target)."""
        return cls.targets(cohort)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised network (deterministic under torch.manual_seed)."""

    @abstractmethod
    def tensors(self, cohort: Cohort, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed (inputs, targets) for the given cohort rows."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss (mean over the batch)."""

    @abstractmethod
    def metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Metrics for a whole evaluation set; includes `primary_metric`."""

    @staticmethod
    @abstractmethod
    def targets(cohort: Cohort) -> np.ndarray:
        """The raw target of every cohort row (for baselines and the head's initial bias)."""

    def labelled(self, cohort: Cohort, indices: list[int]) -> bool:
        """Whether the rows hold the targets this task learns (a segmentation needs label maps)."""
        return True

    def neighbour_slices(self, cohort: Cohort, indices: list[int], spread: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' inputs and `spread` axial slices either side (offsets 0, -1, +1, -2, ...), as
        (inputs, targets) where row i shows person i % len(indices): other anatomy of the same
        people. Only tasks with `slices_of_volumes` have them."""
        raise NotImplementedError(f"task {type(self).__name__} trains on whole volumes")

    def baseline(self, target_mean: float, test_target: torch.Tensor) -> dict[str, float]:
        """Metrics of predicting the mean training target for every test case."""
        import torch

        return self.metrics(torch.full_like(test_target, target_mean), test_target)


TASKS = registry("task", base=Task)
