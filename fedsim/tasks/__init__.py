"""Task plug-ins (`task.name`): model, loss, metrics and preprocessing for one learning problem."""

from fedsim.tasks.base import TASKS, Task
from fedsim.tasks.brain_age import BrainAgeSliceTask, BrainAgeTask

__all__ = ["TASKS", "Task", "BrainAgeTask", "BrainAgeSliceTask"]
