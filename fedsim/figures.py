"""Pictures from the run folder's data (never from in-memory state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MAX_CLIENT_LINES = 10  # beyond this many clients, one band instead of a line (and a legend entry) each


def learning_curves(records: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> Path | None:
    """Test metric per round (server) and validation metric per client, beside the predict-the-mean line."""
    key = summary.get("primary_metric", "mae")
    server = sorted((r["round"], r[f"test_{key}"]) for r in records
                    if r.get("kind") == "server" and r.get(f"test_{key}") is not None)
    if not server:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(*zip(*server, strict=True), "o-", color="black", label=f"global model, server test {key.upper()}")
    evaluated = [r for r in records if r.get("kind") == "evaluate" and r.get(f"val_{key}") is not None]
    clients = sorted({r["client"] for r in evaluated})
    if len(clients) > MAX_CLIENT_LINES:  # a large federation: the clients' median and quartiles per round
        rounds = sorted({r["round"] for r in evaluated})
        q = np.array([np.percentile([r[f"val_{key}"] for r in evaluated if r["round"] == k], [25, 50, 75])
                      for k in rounds])
        ax.plot(rounds, q[:, 1], ".--", color="tab:blue", label=f"clients' validation (median of {len(clients)})")
        ax.fill_between(rounds, q[:, 0], q[:, 2], color="tab:blue", alpha=0.2, label="clients' quartiles")
        clients = []
    for c in clients:
        pts = sorted((r["round"], r[f"val_{key}"]) for r in evaluated if r["client"] == c)
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
