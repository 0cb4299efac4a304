"""Task plug-ins (`task.name`): model, loss, metrics and preprocessing for one learning problem."""

from fedsim.tasks.base import TASKS, Task
from fedsim.tasks.brain_age import BrainAgeSliceTask, BrainAgeTask
from fedsim.tasks.segmentation import SegmentationTask
from fedsim.tasks.sex import SexClassificationTask

__all__ = ["TASKS", "Task", "BrainAgeTask", "BrainAgeSliceTask", "SexClassificationTask", "SegmentationTask"]
