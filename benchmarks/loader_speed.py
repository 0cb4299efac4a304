"""How fast are on-disk datasets read? Volumes per second from NIfTI files, cold and from the cache.

Writes a folder of N synthetic T1-like NIfTI volumes (size^3 voxels of 1 mm, gzip-compressed, as
real scans are) in the nifti_csv layout, then times, for each size:
  read      nibabel decode only (the floor: decompression + dtype conversion)
  cold      the real loader with an empty cache: read + RAS + resample + crop/pad + normalise + write cache
  cached    the real loader again: fingerprint the sources + read the cached arrays
Nothing is downloaded; the folder is deleted afterwards.

    python benchmarks/loader_speed.py [--n 32 --sizes 64 96 128 --shape 32 --workers 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsim.data.loaders import load_disk
from fedsim.data.preprocess import read_nifti
from fedsim.scenario import DataConfig


def write_folder(root: Path, n: int, size: int) -> None:
    """N volumes: a noisy bright ellipsoid (a 'head') in a dark box, int16 like most scanners write."""
    rng = np.random.default_rng(0)
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    inside = (x**2 / 0.7 + y**2 / 0.8 + z**2 / 0.6) < 1
    rows = ["path,age,site"]
    for i in range(n):
        volume = (600 * inside + rng.normal(0, 30, (size,) * 3)).clip(0).astype(np.int16)
        name = f"scans/s{i:04d}.nii.gz"
        (root / "scans").mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.0, 1.0])).to_filename(root / name)
        rows.append(f"{name},{20 + i % 60},{'a' if i % 2 else 'b'}")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")


def read_only(root: Path) -> float:
    """Volumes per second that nibabel alone decodes (one process)."""
    paths = sorted((root / "scans").glob("*.nii.gz"))
    t0 = time.perf_counter()
    for path in paths:
        read_nifti(path)
    return len(paths) / (time.perf_counter() - t0)


def measure(root: Path, cache: Path, n: int, shape: int, workers: int) -> dict[str, float]:
    """Volumes per second through the real loader: empty cache, then the cache it wrote."""
    config = DataConfig(dataset="nifti_csv", path=root, shape=shape)
    t0 = time.perf_counter()
    load_disk("nifti_csv", config, cache_dir=cache, workers=workers, log=lambda _: None)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cohort = load_disk("nifti_csv", config, cache_dir=cache, workers=workers, log=lambda _: None)
    cached_s = time.perf_counter() - t0
    assert len(cohort) == n
    return {"cold": n / cold_s, "cached": n / cached_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="volumes in the folder")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128], help="source volume side(s), voxels")
    p.add_argument("--shape", type=int, default=32, choices=(16, 32, 48, 64), help="output side (data.shape)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="preprocessing processes")
    args = p.parse_args()
    print(f"loader speed: {args.n} gzip NIfTI volumes per size -> {args.shape}^3 (volumes per second)\n")
    print("| source | MB on disk | read only (nibabel, 1 process) | workers | cold (preprocess + cache) | cached |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "data"
            write_folder(root, args.n, size)
            mb = sum(f.stat().st_size for f in (root / "scans").iterdir()) / 2**20
            read = read_only(root)
            for workers in args.workers:
                r = measure(root, Path(tmp) / f"cache{workers}", args.n, args.shape, workers)
                print(f"| {size}^3 | {mb:.1f} | {read:.1f} | {workers} | {r['cold']:.1f} | {r['cached']:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
