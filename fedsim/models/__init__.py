"""Model plug-ins (`task.model.name`). Networks are built from MONAI blocks, never with BatchNorm."""

from fedsim.models.brain_age import MODELS, BrainAgeCNN
from fedsim.models.lenet import LeNet

__all__ = ["MODELS", "BrainAgeCNN", "LeNet"]
