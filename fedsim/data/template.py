"""The shipped anatomical base: MNI ICBM152 2009 T1 / GM / WM / CSF maps at 64^3 (3 mm voxels).

Shipped as package data (``assets/mni152_64.npz``, built by ``scripts/make_template.py``) so a
synthetic cohort can be generated anywhere with no download. See ``assets/NOTICE.md`` for the licence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable

import numpy as np

TEMPLATE_FILE = "mni152_64.npz"


@dataclass(frozen=True)
class Template:
    """Float32 maps in 0..1 on a cube of side ``shape`` voxels of ``voxel_mm`` each (read-only)."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    voxel_mm: float

    @property
    def shape(self) -> int:
        return self.t1.shape[0]

    @property
    def fov_mm(self) -> float:
        return self.shape * self.voxel_mm


def template_path() -> Traversable:
    """Where the template lives inside the installed package."""
    return resources.files("fedsim.data").joinpath("assets", TEMPLATE_FILE)


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load and cache the template; arrays are frozen because every caller shares them."""
    with template_path().open("rb") as fh, np.load(fh) as npz:
        maps = {}
        for name in ("t1", "gm", "wm", "csf"):
            arr = npz[name].astype(np.float32) / np.float32(255.0)
            arr.setflags(write=False)
            maps[name] = arr
        voxel_mm = float(npz["voxel_mm"])
    return Template(**maps, voxel_mm=voxel_mm)
