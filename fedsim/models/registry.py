"""The model registry (`task.model.name`): built-in networks are declared here by name and loaded
on first use, so that listing and validating scenarios never import torch or MONAI."""

from __future__ import annotations

from fedsim.registry import registry

MODELS = registry("model")

MODELS.lazy("brain_age_cnn", "fedsim.models.brain_age:BrainAgeCNN",
            "3D (or 2D) CNN regressor: conv blocks, global pooling, 1x1x1 head; output bias = mean age.")
MODELS.lazy("lenet", "fedsim.models.lenet:LeNet",
            "Sigmoid LeNet-style regressor without global pooling (leaks spatial detail through its gradient).")
MODELS.lazy("unet", "fedsim.models.segmentation:SegUNet",
            "MONAI UNet: one level per `channels` entry, stride-2 down/up sampling, residual units.")
MODELS.lazy("segresnet", "fedsim.models.segmentation:SegResNetModel",
            "MONAI SegResNet (residual encoder, light decoder): first width `channels[0]`, depth `len(channels)`.")
MODELS.lazy("mlp", "fedsim.models.mlp:RecordMLP",
            "Multilayer perceptron over a clinical record (task clinical): hidden widths `channels`, ReLU.")
