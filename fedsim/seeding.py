"""One scenario seed -> every random source (Python, NumPy, torch, Flower's client sampling)."""

from __future__ import annotations

import hashlib
import random


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 32-bit seed for a sub-stream, e.g. (seed, "train", round, client)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed Python's `random` (Flower samples clients with it), NumPy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
