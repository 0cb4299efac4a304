"""The privacy–utility plot of a sweep: utility on x, attack success on y, one curve per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pick_attack_metric(rows: list[dict[str, Any]], wanted: str | None) -> str | None:
    """`wanted`, else the first membership AUC column, else the first PSNR-gain column."""
    columns = [k for row in rows for k in row]
    if wanted:
        return wanted
    for suffix in (".auc", ".psnr_gain"):
        found = next((c for c in columns if c.endswith(suffix)), None)
        if found:
            return found
    return None


def privacy_utility_figure(rows: list[dict[str, Any]], grid_keys: list[str], path: Path, *,
                           attack_metric: str | None) -> Path | None:
    """Points of the last grid key joined into one curve per combination of the other keys."""
    metric = pick_attack_metric(rows, attack_metric)
    utility = next((k for row in rows for k in row if k.startswith("test_")), None)
    ok = [r for r in rows if r.get(metric) is not None and r.get(utility) is not None] if metric and utility else []
    if not ok:
        return None
    *group_keys, strength = grid_keys
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in ok:
        name = ", ".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in group_keys) or strength.rsplit(".", 1)[-1]
        curves.setdefault(name, []).append(row)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, pts in curves.items():
        ax.plot([p[utility] for p in pts], [p[metric] for p in pts], marker="o", label=name)
        for p in pts:
            ax.annotate(str(p[strength]), (p[utility], p[metric]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if metric.endswith(".auc"):
        ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel(f"{utility.removeprefix('test_')} on the test set (utility)")
    ax.set_ylabel(f"{metric} (attack success)")
    ax.set_title(f"privacy–utility, labels: {strength.rsplit('.', 1)[-1]}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
