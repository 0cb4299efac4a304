"""Gradient inversion attacks (DLG, iDLG, Inverting Gradients, FedAvg update inversion, PCA prior).

An honest-but-curious server reconstructs a client's images from the gradient or weight update it
sent. On 3D brains pixel-space search does not beat the population-mean image, so score results with
``fedsim.attacks.metrics.score_reconstruction`` (gain over the prior, re-identification), not raw PSNR.
The plug-ins are in `plugins`, the search itself in `optimize` (imported only when an attack runs).
"""
