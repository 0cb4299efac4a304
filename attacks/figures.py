"""Truth, reconstruction and prior side by side (three orthogonal slices for volumes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fedsim.attacks.metrics import match_batch, psnr_summary  # noqa: E402


def _views(image: torch.Tensor) -> list[torch.Tensor]:
    """(C, *spatial) -> 2D panels: axial, coronal, sagittal mid-slices for 3D; the image for 2D."""
    x = image[0]
    if x.dim() == 2:
        return [x]
    cx, cy, cz = (s // 2 for s in x.shape)
    return [x[:, :, cz], x[:, cy, :], x[cx, :, :]]


def reconstruction_figure(truth: torch.Tensor, recon: torch.Tensor, prior: torch.Tensor,
                          scores: dict[str, Any], out: Path, max_items: int = 4) -> Path:
    """One row per attacked image (up to `max_items`): truth | reconstruction | population prior."""
    n = min(len(truth), len(recon), max_items)
    recon = recon[match_batch(recon[: len(truth)], truth[: len(recon)])] if len(recon) >= len(truth) else recon
    columns = [("truth", truth), ("reconstruction", recon), ("prior (population mean)", prior[None].expand_as(truth))]
    n_views = len(_views(truth[0]))
    fig, axes = plt.subplots(n, 3 * n_views, figsize=(1.6 * 3 * n_views, 1.7 * n + 0.6), squeeze=False)
    for i in range(n):
        lo, hi = float(truth[i].min()), float(truth[i].max())  # one grey scale per row: the truth's
        for j, (label, stack) in enumerate(columns):
            for k, panel in enumerate(_views(stack[i].detach().float())):
                ax = axes[i, j * n_views + k]
                ax.imshow(panel.T.numpy(), cmap="gray", origin="lower", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and k == 0:
                    ax.set_title(label, fontsize=8, loc="left")
    psnr = psnr_summary(scores, unit=" dB")[0] if "psnr" in scores and "prior_psnr" in scores else "–"
    fig.suptitle(f"{scores.get('attack')} · round {scores.get('round')} client {scores.get('client')}\n"
                 f"PSNR {psnr} "
                 f"(prior {scores.get('prior_psnr', float('nan')):.1f}) · "
                 f"SSIM {scores.get('ssim', float('nan')):.2f} · re-id top-1 {scores.get('reid_top1', 0):.0%}",
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
