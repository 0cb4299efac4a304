"""Model plug-ins (`task.model.name`). Networks are built from MONAI blocks, never with BatchNorm."""

from fedsim.models.brain_age import BrainAgeCNN, MODELS

__all__ = ["BrainAgeCNN", "MODELS"]
