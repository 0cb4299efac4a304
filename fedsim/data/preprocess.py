"""Turn one NIfTI file (and its label map) into a fixed-size, normalised training volume.

Steps: read with nibabel, reorient to RAS, resample to an isotropic spacing (``data.spacing``, or the
spacing that fits the whole field of view into ``shape``^3), centre-crop / pad to ``shape``^3, then
scale intensities per volume (z-score, percentiles, or a CT window in HU). Labels follow the same
geometry with nearest-neighbour interpolation, so they stay integer class ids. The MONAI transforms
do the resampling and scaling; a file that cannot be read raises :class:`VolumeError` saying why.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CT_WINDOW = (-175.0, 250.0)  # HU, abdominal soft tissue: the usual window for MSD's CT organ tasks
PERCENTILES = (0.5, 99.5)
MIN_ITEMS_FOR_POOL = 8  # below this a process pool costs more than it saves


class VolumeError(ValueError):
    """A file that cannot be used (corrupt, truncated, wrong shape); the message names the problem."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything that determines the preprocessed arrays (part of the cache key)."""

    shape: int
    spacing: float | None = None  # mm, isotropic; None: fit the field of view
    normalize: str = "zscore"  # zscore | percentile | window (resolved, never "auto")
    window: tuple[float, float] = CT_WINDOW

    @classmethod
    def for_data(cls, *, shape: int, spacing: float | None, normalize: str,
                 window: Sequence[float] | None, modality: str) -> Preprocessing:
        """Resolve ``normalize: auto`` from the modality: CT gets a HU window, everything else z-score."""
        if normalize == "auto":
            normalize = "window" if modality.upper() == "CT" else "zscore"
        return cls(shape=shape, spacing=spacing, normalize=normalize,
                   window=tuple(float(w) for w in window) if window else CT_WINDOW)


@dataclass(frozen=True)
class Volume:
    """One preprocessed subject and the source geometry, for the loader's summary."""

    image: np.ndarray  # float32 (S, S, S)
    label: np.ndarray | None  # uint8 (S, S, S)
    source_shape: tuple[int, int, int]
    source_zooms: tuple[float, float, float]  # mm, RAS axis order
    spacing: float  # mm of the output grid


@dataclass(frozen=True)
class Raw:
    """A volume as stored on disk (no copy into RAS order yet: reorienting the small output is cheaper)."""

    data: np.ndarray  # float32, stored axis order, first channel of a 4D file
    zooms: np.ndarray  # mm per stored axis
    to_ras: np.ndarray  # nibabel orientation transform from stored axes to RAS

    @property
    def ras_zooms(self) -> tuple[float, float, float]:
        out = np.empty(3)
        out[self.to_ras[:, 0].astype(int)] = self.zooms
        return tuple(round(float(z), 3) for z in out)


def read_nifti(path: Path) -> Raw:
    """Read a NIfTI file's first 3D volume, its voxel size and its orientation; VolumeError if damaged."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) == 4:  # multi-channel (MSD BraTS, prostate) or a time series: keep channel 0
            data = np.asanyarray(img.dataobj[..., 0])
        elif len(shape) == 3:
            data = np.asanyarray(img.dataobj)
        elif len(shape) == 5 and shape[3] == 1:
            data = np.asanyarray(img.dataobj[..., 0, 0])
        else:
            raise VolumeError(f"not a 3D volume: shape {tuple(shape)}")
        data = data.astype(np.float32, copy=False)  # keeps the file's (Fortran) layout: no transposing copy
    except VolumeError:
        raise
    except Exception as exc:  # nibabel / gzip / zlib raise many types for damaged files
        raise VolumeError(f"unreadable NIfTI: {_short(exc)}") from None
    if min(data.shape) < 2:
        raise VolumeError(f"not a 3D volume: shape {data.shape}")
    if not data.flags.writeable:  # some proxies hand out read-only views; we scale labels in place
        data = data.copy(order="K")
    if not np.isfinite(data).all():
        np.nan_to_num(data, copy=False)
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    return Raw(data=data, zooms=zooms, to_ras=ornt_transform(io_orientation(affine), axcodes2ornt("RAS")))


def preprocess(image_path: Path, label_path: Path | None, prep: Preprocessing) -> Volume:
    """Read, resample, reorient to RAS, crop/pad and normalise one subject (and its label map).

    Resampling is axis-aligned, so it is done in the stored axis order and the (small) result is
    then flipped / permuted into RAS: the same volume as reorienting first, without copying the
    full-resolution array."""
    image = read_nifti(image_path)
    label = None
    if label_path is not None:
        try:
            label = read_nifti(label_path)
        except VolumeError as exc:
            raise VolumeError(f"unreadable label: {label_path.name}: {exc}") from None
        if label.data.shape != image.data.shape:
            raise VolumeError(f"label shape differs from image shape: {label.data.shape} vs {image.data.shape} "
                              f"({label_path.name})")
        np.rint(label.data, out=label.data)
        if label.data.min() < 0 or label.data.max() > 255:
            raise VolumeError(f"label values outside 0..255: {label_path.name}")
    extent = np.array(image.data.shape) * image.zooms
    spacing = prep.spacing or float(extent.max()) / prep.shape
    size = [max(1, round(float(e) / spacing)) for e in extent]
    out = _resample(image, size, prep.shape, pad=float(image.data.min()), nearest=False)
    return Volume(
        image=_normalize(out, prep),
        label=None if label is None else _resample(label, size, prep.shape, pad=0.0, nearest=True).astype(np.uint8),
        source_shape=tuple(int(s) for s in image.data.shape),
        source_zooms=image.ras_zooms,
        spacing=spacing,
    )


def _resample(raw: Raw, size: list[int], side: int, *, pad: float, nearest: bool) -> np.ndarray:
    """Resize to ``size`` voxels (area averaging when shrinking), reorient to RAS, crop / pad to side^3."""
    import torch
    from monai.transforms import Resize, ResizeWithPadOrCrop
    from nibabel.orientations import apply_orientation

    t = torch.from_numpy(raw.data)[None]  # any positive strides will do: no contiguous copy
    if list(raw.data.shape) != size:
        shrinking = all(n <= s for n, s in zip(size, raw.data.shape, strict=True))
        mode = "nearest-exact" if nearest else ("area" if shrinking else "trilinear")
        t = Resize(size, mode=mode, **({} if mode in ("nearest-exact", "area") else {"align_corners": False}))(t)
    small = np.ascontiguousarray(apply_orientation(np.asarray(t[0], dtype=np.float32), raw.to_ras))
    out = ResizeWithPadOrCrop((side,) * 3, mode="constant", value=pad)(torch.from_numpy(small)[None])
    return np.asarray(out[0], dtype=np.float32)


def _normalize(volume: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Per-volume intensity scaling, so that scanners with different gains look alike."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles

    if prep.normalize == "window":
        lo, hi = prep.window
        out = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(volume)
    elif prep.normalize == "percentile":
        out = ScaleIntensityRangePercentiles(lower=PERCENTILES[0], upper=PERCENTILES[1], b_min=0.0, b_max=1.0,
                                             clip=True)(volume)
    else:
        out = NormalizeIntensity()(volume)
    return np.asarray(out, dtype=np.float32)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------- many subjects


def _one(args: tuple[Path, Path | None, Preprocessing]) -> Volume | str:
    try:
        return preprocess(*args)
    except VolumeError as exc:
        return str(exc)
    except MemoryError:
        raise
    except Exception as exc:  # a damaged header can trip numpy / MONAI anywhere: skip, say why
        return f"cannot preprocess: {type(exc).__name__}: {_short(exc)}"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one volume per process: threads would only fight over the cores


def preprocess_many(items: Sequence[tuple[Path, Path | None]], prep: Preprocessing, *,
                    workers: int | None = None) -> list[Volume | str]:
    """Each item's Volume, or the reason it was skipped; in input order, over a process pool when it pays."""
    jobs = [(image, label, prep) for image, label in items]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    in_daemon = multiprocessing.current_process().daemon  # Ray workers and pool children may not fork
    if workers <= 1 or len(jobs) < MIN_ITEMS_FOR_POOL or in_daemon:
        return [_one(job) for job in jobs]
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker) as pool:
        return list(pool.map(_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
