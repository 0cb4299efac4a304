"""Scoring membership-inference attacks: ROC summaries, low-FPR operating points, DP-audit bounds.

Following the anchors of the MIA literature (Carlini et al. 2022), every attack is reported by AUC
*and* by TPR at 1% / 0.1% FPR on a log-scale ROC: an attack that is confident about a few records
matters even when its AUC is near 0.5. An operating point (TPR, FPR) also lower-bounds the epsilon of
any (epsilon, delta)-DP training run (Jagielski et al. 2020, Nasr et al. 2021); with Clopper-Pearson
intervals the bound holds with the stated confidence, so it must never exceed an accountant's epsilon.
Convention everywhere: higher score = "member".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["best_empirical_epsilon", "empirical_epsilon", "membership_metrics", "roc_figure", "tpr_at_fpr"]


def _roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ROC point (no dropped thresholds), starting at (0, 0)."""
    labels = np.asarray(is_member).astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("need at least one member and one non-member")
    fpr, tpr, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The largest TPR reachable by a threshold whose FPR is <= target (0 if none besides the origin).

    No interpolation between ROC points: with n non-members FPR moves in steps of 1/n, and an
    interpolated value would claim an operating point no threshold achieves."""
    ok = np.asarray(fpr) <= target + 1e-12
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def membership_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict:
    """AUC, best balanced accuracy, TPR at 1% and 0.1% FPR, counts, and the ROC for plotting."""
    labels = np.asarray(is_member).astype(bool)
    fpr, tpr = _roc(scores, labels)
    return {
        "auc": float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64))),
        "balanced_accuracy": float(np.max((tpr + 1.0 - fpr) / 2.0)),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_0_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.001),
        "n_members": int(labels.sum()),
        "n_nonmembers": int((~labels).sum()),
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
    }


def _cp_lower(k: float, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound of a binomial proportion k/n at level alpha."""
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def _cp_upper(k: float, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial proportion k/n at level alpha."""
    return 1.0 if k >= n else float(beta.ppf(1.0 - alpha, k + 1, n - k))


def empirical_epsilon(*, tpr: float, fpr: float, n_members: int, n_nonmembers: int, delta: float,
                      confidence: float = 0.95) -> float:
    """Lower bound on epsilon implied by one attack operating point, valid w.p. >= `confidence`.

    (eps, delta)-DP forces TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta. We plug in a
    Clopper-Pearson lower bound on TPR and upper bound on FPR, each one-sided at (1 - confidence)/2
    so both hold jointly (union bound), and return the larger of the two implied epsilons (>= 0)."""
    alpha = (1.0 - confidence) / 2.0
    tpr_lo = _cp_lower(round(tpr * n_members), n_members, alpha)
    fpr_hi = _cp_upper(round(fpr * n_nonmembers), n_nonmembers, alpha)
    bounds = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1.0 - fpr_hi - delta > 0 and 1.0 - tpr_lo > 0:
        bounds.append(math.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo)))
    return max(bounds)


def best_empirical_epsilon(scores: np.ndarray, is_member: np.ndarray, *, delta: float,
                           confidence: float = 0.95) -> float:
    """The largest `empirical_epsilon` over all ROC thresholds of the scores.

    Picking the best of m thresholds on the same data would make a per-threshold bound optimistic,
    so each threshold is evaluated at confidence 1 - (1 - confidence) / m (Bonferroni over every ROC
    point, m = distinct scores + 1): the maximum then holds with at least `confidence`. This is
    conservative; splitting the data to choose the threshold wastes too many samples at n ~ 30."""
    labels = np.asarray(is_member).astype(bool)
    fpr, tpr = _roc(scores, labels)
    per_point = 1.0 - (1.0 - confidence) / len(fpr)
    n_in, n_out = int(labels.sum()), int((~labels).sum())
    return max(empirical_epsilon(tpr=t, fpr=f, n_members=n_in, n_nonmembers=n_out, delta=delta,
                                 confidence=per_point) for f, t in zip(fpr, tpr, strict=True))


def roc_figure(curves: dict[str, tuple[list, list, float]], out: Path, title: str) -> Path:
    """Log-log ROC, one line per attack (label -> (fpr, tpr, auc)), chance diagonal; saved to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = 1e-3
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([lo, 1], [lo, 1], ls="--", color="grey", lw=1, label="chance")
    for label, (fpr, tpr, auc) in curves.items():
        # zeros cannot sit on a log axis: show them at the axis floor
        ax.step(np.clip(fpr, lo, 1), np.clip(tpr, lo, 1), where="post", lw=1.5, label=f"{label} (AUC {auc:.2f})")
    ax.set(xscale="log", yscale="log", xlim=(lo, 1), ylim=(lo, 1.05), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
