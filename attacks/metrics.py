"""Leakage scores for reconstructed images: fidelity beside a population prior, and re-identification.

Raw PSNR says little for brains (they look alike: the population-mean image alone scores ~21 dB),
so every score here comes with the same score of the prior and with re-identification among
candidates (see docs/notes on gradient inversion in 3D). All functions take tensors shaped
(B, C, *spatial) with 2 or 3 spatial dims and never modify their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics.regression import compute_ms_ssim, compute_ssim_and_cs
from scipy.optimize import linear_sum_assignment

PSNR_CAP = 1000.0  # score_reconstruction reports this for identical images (strict JSON has no inf)
EXACT_PSNR_DB = 100.0  # at or above: the very image, up to float rounding (counted as exact, not averaged)
UNRECOGNISABLE_SSIM = 0.3  # below it a reconstruction counts as unrecognisable (He, Zhang and Lee, ACSAC 2019)

__all__ = ["match_batch", "ms_ssim", "mse", "psnr", "reidentification_ranks", "score_reconstruction", "ssim"]
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli and Bovik's five scales


def _check(recon: torch.Tensor, truth: torch.Tensor) -> None:
    if recon.shape != truth.shape:
        raise ValueError(f"shape mismatch: recon {tuple(recon.shape)} vs truth {tuple(truth.shape)}")
    if recon.dim() not in (4, 5):
        raise ValueError(f"expected (B, C, *spatial) with 2 or 3 spatial dims, got {tuple(recon.shape)}")


def _data_range(truth: torch.Tensor, data_range: float | None) -> torch.Tensor:
    """Per-item dynamic range of the truth (z-scored volumes have no fixed range)."""
    if data_range is not None:
        return torch.full((truth.shape[0],), float(data_range), dtype=torch.float64)
    flat = truth.detach().double().flatten(1)
    return (flat.amax(1) - flat.amin(1)).clamp_min(1e-12)


def mse(recon: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean squared error per item, shape (B,)."""
    _check(recon, truth)
    return (recon.detach().double() - truth.detach().double()).pow(2).flatten(1).mean(1)


def psnr(recon: torch.Tensor, truth: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """PSNR in dB per item, shape (B,); inf for a perfect reconstruction."""
    err = mse(recon, truth)
    rng = _data_range(truth, data_range)
    return 10.0 * torch.log10(rng**2 / err)


def _window(spatial: Sequence[int]) -> int:
    """Largest odd Gaussian window <= 11 that fits the smallest side (16^3 volumes get 11, 8^3 get 7)."""
    win = min(11, min(spatial))
    return win if win % 2 == 1 else win - 1


def ssim(recon: torch.Tensor, truth: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """Structural similarity per item (MONAI, Gaussian window), shape (B,)."""
    _check(recon, truth)
    spatial = tuple(truth.shape[2:])
    dims = len(spatial)
    win = _window(spatial)
    if win < 3:
        raise ValueError(f"images too small for SSIM: {spatial}")
    sigma = 1.5 * win / 11.0
    rng = _data_range(truth, data_range)
    out = []
    for i in range(truth.shape[0]):
        s, _ = compute_ssim_and_cs(
            recon[i : i + 1].detach().double(), truth[i : i + 1].detach().double(), spatial_dims=dims,
            kernel_size=[win] * dims, kernel_sigma=[sigma] * dims, data_range=float(rng[i]),
        )
        out.append(s.flatten(1).mean())
    return torch.stack(out)


def ms_ssim_scales(spatial: Sequence[int]) -> tuple[int, int] | None:
    """(scales, window) of the multi-scale SSIM that images of `spatial` sides allow: the most of the
    standard five scales at which MONAI's size rule holds with a window of at least 7 (32^3: three
    scales, window 7; 64: four; 128: five); None when fewer than three fit."""
    for scales in (5, 4, 3):
        win = min(11, min(spatial) // (scales - 1) ** 2)  # MONAI: side // (scales - 1)^2 > window - 1
        win = win if win % 2 == 1 else win - 1
        if win >= 7:
            return scales, win
    return None


def ms_ssim(recon: torch.Tensor, truth: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor | None:
    """Multi-scale SSIM per item (MONAI), shape (B,), on as many of the standard scales as the size
    allows (their weights renormalised); None for images too small for three scales."""
    _check(recon, truth)
    spatial = tuple(truth.shape[2:])
    fit = ms_ssim_scales(spatial)
    if fit is None:
        return None
    scales, win = fit
    weights = [w / sum(MS_SSIM_WEIGHTS[:scales]) for w in MS_SSIM_WEIGHTS[:scales]]
    rng = _data_range(truth, data_range)
    out = [compute_ms_ssim(recon[i : i + 1].detach().double(), truth[i : i + 1].detach().double(),
                           spatial_dims=len(spatial), data_range=float(rng[i]), kernel_size=win,
                           kernel_sigma=1.5 * win / 11.0, weights=weights).flatten().mean()
           for i in range(truth.shape[0])]
    return torch.stack(out).double()


def _pairwise_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) mean squared distances between flattened items."""
    fa, fb = a.detach().double().flatten(1), b.detach().double().flatten(1)
    return torch.cdist(fa, fb).pow(2) / fa.shape[1]


def match_batch(recon: torch.Tensor, truth: torch.Tensor) -> list[int]:
    """Order of reconstructions that best pairs them with the truth: recon[perm[i]] <-> truth[i].

    A batch attack returns images in arbitrary order; scoring must not punish that.
    """
    _check(recon, truth)
    cost = _pairwise_mse(truth, recon).numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = [0] * len(rows)
    for r, c in zip(rows, cols, strict=True):
        perm[int(r)] = int(c)
    return perm


def _zscore(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().double().flatten(1)
    return (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-12)


def reidentification_ranks(
    recon: torch.Tensor, candidates: torch.Tensor, true_index: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Rank (1 = nearest) of each reconstruction's true scan among the candidates, shape (B,).

    Nearest neighbour by MSE after z-scoring each volume, so a global gain/offset error does not
    hide identity. Ties count against the attacker (rank = 1 + number of candidates at least as near,
    other than the true one).
    """
    idx = torch.as_tensor(true_index, dtype=torch.long).flatten()
    if len(idx) != recon.shape[0]:
        raise ValueError("true_index needs one entry per reconstruction")
    if recon.shape[1:] != candidates.shape[1:]:
        raise ValueError("candidates must have the reconstructions' (C, *spatial) shape")
    zr, zc = _zscore(recon), _zscore(candidates)
    dist = torch.cdist(zr, zc).pow(2)  # (B, N)
    true = dist.gather(1, idx[:, None])
    closer = (dist <= true).sum(1) - 1  # the true one itself is excluded
    return (1 + closer).long()


def score_reconstruction(
    recon: torch.Tensor,
    truth: torch.Tensor,
    *,
    prior: torch.Tensor,
    candidates: torch.Tensor,
    true_index: Sequence[int] | torch.Tensor,
    batch: bool = True,
) -> dict[str, float]:
    """Headline leakage scores of one attacked batch (JSON-ready floats).

    ``prior`` is the attacker's population-mean image, (C, *spatial) or (1, C, *spatial): what an
    attacker gets without attacking. ``true_index[i]`` is the candidate index of ``truth[i]``.
    A batch attack returns its images in any order, so they are first paired with the truth;
    ``batch=False`` scores reconstructions of separate observations (``recon[i]`` from the update of
    ``truth[i]`` alone), which must never be re-paired across observations.
    """
    _check(recon, truth)
    matched = recon.detach()[match_batch(recon, truth)] if batch else recon.detach()
    prior_b = (prior.detach() if prior.dim() == truth.dim() else prior.detach()[None]).expand_as(truth)
    ranks = reidentification_ranks(matched, candidates, true_index).double()
    item_psnr = psnr(matched, truth).clamp(max=PSNR_CAP)
    scores = {
        "mse": mse(matched, truth).mean(),
        "psnr": item_psnr.mean(),
        "psnr_median": item_psnr.median(),
        "exact": (exact := item_psnr >= EXACT_PSNR_DB).double().mean(),  # fraction rebuilt to float rounding
        "recovered_30db": (item_psnr > 30).double().mean(),  # fraction of the batch rebuilt above 30 dB
        "ssim": (item_ssim := ssim(matched, truth)).mean(),
        "unrecognisable": (item_ssim < UNRECOGNISABLE_SSIM).double().mean(),  # He et al.'s line
        "prior_mse": mse(prior_b, truth).mean(),
        "prior_psnr": psnr(prior_b, truth).clamp(max=PSNR_CAP).mean(),
        "prior_ssim": ssim(prior_b, truth).mean(),
        "reid_top1": (ranks <= 1).double().mean(),
        "reid_top5": (ranks <= 5).double().mean(),
        "median_rank": ranks.quantile(0.5),
    }
    multi = ms_ssim(matched, truth)
    if multi is not None:
        scores.update(ms_ssim=multi.mean(), prior_ms_ssim=ms_ssim(prior_b, truth).mean())
    if not exact.all():  # the PSNR of what was not recovered exactly: a mean the cap cannot inflate
        scores["psnr_inexact"] = item_psnr[~exact].mean()
    out = {k: float(v) for k, v in scores.items()}
    out["psnr_gain"] = out["psnr"] - out["prior_psnr"]
    out["ssim_gain"] = out["ssim"] - out["prior_ssim"]
    out["chance_top1"] = 1.0 / len(candidates)
    return out


def psnr_summary(row: dict[str, Any], unit: str = "") -> tuple[str, str]:
    """(PSNR cell, gain-over-prior cell) of a scored row: exact recoveries are said to be exact and
    counted, never averaged in at the numeric cap (a mean of 1000 dB and 20 dB reads as 510 dB)."""
    if "exact" not in row:  # scored before exact recoveries were counted: the plain mean, flagged if capped
        capped = " (a mean with exact items at the cap)" if row["psnr"] >= EXACT_PSNR_DB else ""
        return f"{row['psnr']:.1f}{unit}{capped}", f"{row['psnr'] - row['prior_psnr']:+.1f}{unit}"
    exact = row["exact"]
    if exact >= 1.0:
        return "exact", "exact"
    psnr = row.get("psnr_inexact", row["psnr"]) if exact > 0 else row["psnr"]
    gain = f"{psnr - row['prior_psnr']:+.1f}{unit}"
    return (f"{psnr:.1f}{unit} + {exact:.0%} exact", gain) if exact > 0 else (f"{psnr:.1f}{unit}", gain)
