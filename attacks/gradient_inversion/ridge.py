"""The learned inversion's dual ridge: the Gram matrix in blocks of float16 rows, the RBF kernel
from it, and the ridge strength chosen by re-identifying people the fit never saw."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RIDGE_GRID = tuple(float(10.0**k) for k in np.arange(-6.0, 1.01, 0.5))  # x the Gram's mean diagonal
VAL_VOXELS = 2048  # voxels the held-out reconstructions are compared on
BLOCK = 512  # rows per block of the Gram and of predictions


def gram_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a b^T / P in float64, over blocks of float16 rows."""
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(0, len(a), BLOCK):
        ai = a[i:i + BLOCK].float()
        for j in range(0, len(b), BLOCK):
            out[i:i + BLOCK, j:j + BLOCK] = (ai @ b[j:j + BLOCK].float().T).double()
    return out.div_(a.shape[1])


def rbf(linear: torch.Tensor, sq_a: torch.Tensor, sq_b: torch.Tensor, gamma: float) -> torch.Tensor:
    """exp(-gamma * |a - b|^2) from the linear kernel a.b and the squared norms (all / P)."""
    return torch.exp(-gamma * (sq_a + sq_b - 2 * linear).clamp_min(0))


def choose_ridge(gram: torch.Tensor, images: torch.Tensor, fit: np.ndarray, val: np.ndarray,
                 originals: np.ndarray, *, grid: Sequence[float], seed: int,
                 image_mean: torch.Tensor | None = None) -> tuple[float, float]:
    """The relative ridge under which the held-out originals' reconstructions are most often nearest
    their own scan among all the attacker's original scans (re-identification: what the attacker is
    after), and its voxel error; of ridges that tie, the strongest: a weak ridge scores as well on
    held-out scans simulated exactly as the fit's were, but amplifies the rounding differences of a
    real client's gradient (and one standard error of a small held-out set spans too many ridges).
    `images` are centred; with their `image_mean` added back, nearness is measured as re-identification
    scores it (`metrics.reidentification_ranks`: whole scans, each z-scored), under which a ridge
    that shrinks a reconstruction toward the mean finds the most typical scan, not its own."""
    rng = np.random.default_rng(seed)
    voxels = torch.as_tensor(rng.choice(images.shape[1], size=min(VAL_VOXELS, images.shape[1]), replace=False))
    k_ff = gram[np.ix_(fit, fit)].float()  # float32 is plenty to rank ridges, and half the memory
    diag = float(k_ff.diagonal().mean())
    s, u = torch.linalg.eigh(k_ff)
    del k_ff
    y_f, y_v = images[fit][:, voxels].float(), images[val][:, voxels].float()
    mean = y_f.mean(0)
    a = u.T @ (y_f - mean)
    kv_u = gram[np.ix_(val, fit)].float() @ u
    del u
    offset = image_mean[voxels].float() if image_mean is not None else torch.zeros(len(voxels))
    pool = _zscore(images[torch.as_tensor(originals)][:, voxels].float() + offset)
    own = torch.as_tensor(np.searchsorted(originals, val))
    scores = []
    for r in grid:
        pred = (kv_u / (s + r * diag)) @ a + mean
        nearest = torch.cdist(_zscore(pred + offset), pool).argmin(1)
        hits = float((nearest == own).double().mean())
        scores.append((hits, float((pred - y_v).pow(2).mean())))
    top = max(h for h, _ in scores)
    best = max(i for i in range(len(grid)) if scores[i][0] == top)
    return grid[best], scores[best][1]


def _zscore(rows: torch.Tensor) -> torch.Tensor:
    return (rows - rows.mean(1, keepdim=True)) / (rows.std(1, keepdim=True) + 1e-12)


def held_out(n_scans: int, subjects: int, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Scans held out to choose the ridge: every view (scan i shows person i % subjects) of a
    `val_fraction` of the people, so that no held-out person is also fitted on."""
    if n_scans % subjects:
        raise ValueError(f"{n_scans} scans are not {subjects} people's views, as many of each")
    people = rng.permutation(subjects)[: max(2, round(val_fraction * subjects))]
    return np.flatnonzero(np.isin(np.arange(n_scans) % subjects, people))


