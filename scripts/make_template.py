"""Build the tiny anatomical base that fedsim's synthetic cohort is generated from (dev-only).

Reads the MNI ICBM152 2009 T1, GM and WM maps that ship inside nilearn's wheel (no network),
crops them to the brain, pads to a 192 mm cube, anti-aliases and decimates to 64^3 (3 mm voxels),
derives CSF = clip(brain_mask - GM - WM) and stores all four maps as uint8 in
``fedsim/data/assets/mni152_64.npz``. Run once; the output is committed so users never need nilearn.

    python scripts/make_template.py [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

GRID = 64  # stored side length (voxels)
FOV_MM = 192  # cube side; 192 / 64 = 3 mm voxels, leaves room for heads up to ~6% larger than MNI
BRAIN_THRESHOLD = 0.2  # T1 > 0.2 is the brain (the nilearn template is skull-stripped)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fedsim" / "data" / "assets" / "mni152_64.npz"


def load_mni_maps() -> dict[str, np.ndarray]:
    """The 1 mm MNI152 2009 maps from nilearn's bundled files, values 0..1, CSF derived."""
    from nilearn import datasets  # dev-only dependency

    t1 = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = (t1 > BRAIN_THRESHOLD).astype(np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    return {"t1": t1, "gm": gm * mask, "wm": wm * mask, "csf": csf}


def brain_cube(volume: np.ndarray, bbox: tuple[slice, ...], side: int) -> np.ndarray:
    """Crop to the brain's bounding box and zero-pad, centred, to a cube of ``side`` voxels."""
    crop = volume[bbox]
    out = np.zeros((side,) * 3, dtype=np.float32)
    starts = [(side - n) // 2 for n in crop.shape]
    if min(starts) < 0:
        raise ValueError(f"brain bounding box {crop.shape} does not fit a {side} mm cube")
    out[tuple(slice(s, s + n) for s, n in zip(starts, crop.shape, strict=True))] = crop
    return out


def decimate(volume: np.ndarray, factor: int) -> np.ndarray:
    """Gaussian anti-alias (sigma 0.4 x factor) then sample at block centres."""
    smooth = ndimage.gaussian_filter(volume, sigma=0.4 * factor, mode="constant")
    start = factor // 2
    return smooth[start::factor, start::factor, start::factor]


def build(out: Path) -> dict[str, np.ndarray]:
    """Make and save the 64^3 uint8 maps; returns them for inspection."""
    maps = load_mni_maps()
    idx = np.argwhere(maps["t1"] > BRAIN_THRESHOLD)
    bbox = tuple(slice(lo, hi + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))
    factor = FOV_MM // GRID
    small = {k: decimate(brain_cube(v, bbox, FOV_MM), factor) for k, v in maps.items()}
    # keep tissue classes a partition of the brain after filtering
    total = small["gm"] + small["wm"] + small["csf"]
    over = np.maximum(total, 1.0)
    for k in ("gm", "wm", "csf"):
        small[k] = small[k] / over
    packed = {k: np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for k, v in small.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    bbox_1mm = np.array([[s.start, s.stop] for s in bbox], dtype=np.int16)
    np.savez_compressed(out, **packed, voxel_mm=np.float32(FOV_MM / GRID), bbox_1mm=bbox_1mm)
    return packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    packed = build(args.out)
    size_kb = args.out.stat().st_size / 1024
    print(f"wrote {args.out} ({size_kb:.0f} KB)")
    for k, v in packed.items():
        print(f"  {k}: {v.shape} {v.dtype} mean {v.mean() / 255:.3f}")


if __name__ == "__main__":
    main()
