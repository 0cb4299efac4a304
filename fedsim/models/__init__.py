"""Model plug-ins (`task.model.name`). Networks are built from MONAI blocks, never with BatchNorm."""

from fedsim.models.brain_age import MODELS, BrainAgeCNN
from fedsim.models.lenet import LeNet
from fedsim.models.segmentation import SegResNetModel, SegUNet

__all__ = ["MODELS", "BrainAgeCNN", "LeNet", "SegUNet", "SegResNetModel"]
