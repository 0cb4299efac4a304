"""Pictures from the run folder's data (never from in-memory state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curves(records: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> Path | None:
    """Test metric per round (server) and validation metric per client, beside the predict-the-mean line."""
    key = summary.get("primary_metric", "mae")
    server = sorted((r["round"], r[f"test_{key}"]) for r in records
                    if r.get("kind") == "server" and r.get(f"test_{key}") is not None)
    if not server:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(*zip(*server, strict=True), "o-", color="black", label=f"global model, server test {key.upper()}")
    clients = sorted({r["client"] for r in records if r.get("kind") == "evaluate"})
    for c in clients:
        pts = sorted((r["round"], r[f"val_{key}"]) for r in records
                     if r.get("kind") == "evaluate" and r["client"] == c and r.get(f"val_{key}") is not None)
        if pts:
            ax.plot(*zip(*pts, strict=True), ".--", alpha=0.7, label=f"client {c} validation")
    base = summary.get("baseline_predict_mean", {}).get(key)
    if base is not None:
        ax.axhline(base, color="grey", linestyle=":", label=summary.get("baseline_name", "predict the mean"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(key.upper() + (" (years)" if key == "mae" else ""))
    ax.set_title(summary.get("scenario", ""))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
