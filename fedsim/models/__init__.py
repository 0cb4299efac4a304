"""Model plug-ins (`task.model.name`). Networks are built from MONAI blocks, never with BatchNorm.

The registry lives in `fedsim.models.registry`; each network in its own module, imported on use."""
