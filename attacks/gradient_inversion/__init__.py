"""Gradient inversion attacks (DLG, iDLG, Inverting Gradients, FedAvg update inversion, PCA prior).

An honest-but-curious server reconstructs a client's images from the gradient or weight update it
sent. On 3D brains pixel-space search does not beat the population-mean image, so score results with
``attacks.metrics.score_reconstruction`` (gain over the prior, re-identification), not raw PSNR.
"""

from fedsim.attacks.gradient_inversion.optimize import (
    InversionConfig,
    InversionResult,
    gradients_of,
    invert_gradient,
    invert_weight_update,
    recover_labels_idlg,
)

__all__ = [
    "InversionConfig",
    "InversionResult",
    "gradients_of",
    "invert_gradient",
    "invert_weight_update",
    "recover_labels_idlg",
]
