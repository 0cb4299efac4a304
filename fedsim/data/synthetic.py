"""Embedded synthetic brain-age cohort: T1 volumes of simulated subjects from simulated hospitals.

Each subject is the shipped MNI152 template, aged (cortical thinning, white-matter loss, larger
ventricles), given an individual anatomy (head size, pose, elastic warp) and scanned by its site's
scanner (contrast, bias field, noise). Ground-truth tissue labels come with every image, and the
"biological" age that drives atrophy differs from the recorded age by N(0, 4 y), so no model can be
perfect. Generation is deterministic from the spec and cached on disk by the spec's key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from fedsim.data.anatomy import (
    Warp,
    anatomy_base,
    atrophied_tissues,
    atrophy_factor,
    elastic_field,
    rotation_matrix,
    warp_tissues,
)

GENERATOR_VERSION = "1"  # bump whenever generated data changes: it invalidates every cached cohort
VALID_SHAPES = (16, 32, 48, 64)
BIO_AGE_SD = 4.0  # years between recorded and biological age: the irreducible error
MIN_SUBJECTS_FOR_POOL = 16  # below this a process pool costs more than it saves
DX_STREAM = 0x64_78  # the diagnosis draws' own random stream: they never shift anyone's anatomy or scan
DX_ONSET_AGE, DX_ONSET_WIDTH = 72.0, 6.0  # prevalence rises as a logistic in age around 72
DX_MIN_SEVERITY = 0.4  # diagnosed cases have severity uniform in [0.4, 1]: mild cases are hard
DX_VENTRICLES = 0.5  # extra ventricle enlargement at full severity (ageing adds 0.45 by 90)


@dataclass(frozen=True)
class SiteProfile:
    """One simulated hospital/scanner: who it scans and how its images look."""

    name: str
    age_range: tuple[float, float]
    contrast: tuple[float, float, float]  # CSF, GM, WM mean T1 intensity
    bias_strength: float  # peak-to-peak relative intensity variation of the bias field in the brain
    noise_sigma: float  # Rician noise sigma, in the same units as contrast
    dx_enrichment: float = 0.5  # neurodegeneration: prevalence at old age (a memory clinic's is higher)


DEFAULT_SITES: tuple[SiteProfile, ...] = (
    SiteProfile("site_a_3t_all_ages", (20.0, 90.0), (0.28, 0.62, 0.88), 0.25, 0.020, 0.6),
    SiteProfile("site_b_15t_young", (20.0, 60.0), (0.20, 0.52, 0.76), 0.45, 0.045, 0.6),
    SiteProfile("site_c_3t_older", (45.0, 90.0), (0.34, 0.68, 0.95), 0.20, 0.015, 0.9),
    SiteProfile("site_d_15t_all_ages", (25.0, 85.0), (0.25, 0.58, 0.80), 0.35, 0.035, 0.5),
    SiteProfile("site_e_3t_midlife", (35.0, 75.0), (0.30, 0.64, 0.90), 0.30, 0.025, 0.6),
    SiteProfile("site_f_7t_young", (20.0, 50.0), (0.24, 0.60, 0.92), 0.45, 0.018, 0.6),
    SiteProfile("site_g_15t_older", (55.0, 90.0), (0.22, 0.55, 0.78), 0.25, 0.040, 0.9),
    SiteProfile("site_h_3t_all_ages", (20.0, 90.0), (0.31, 0.66, 0.86), 0.35, 0.030, 0.5),
)


@dataclass(frozen=True)
class CohortSpec:
    """Everything that determines a cohort; equal specs give identical cohorts."""

    n_subjects: int = 200
    shape: int = 32  # output side; simulated at 2x (up to 64) and block-averaged for partial volume
    n_sites: int = 3  # uses DEFAULT_SITES[:n_sites]; subject i is at site i % n_sites
    seed: int = 0
    neurodegeneration: bool = False  # diagnose part of each site's subjects (see `_diagnosis`)

    def __post_init__(self) -> None:
        if self.shape not in VALID_SHAPES:
            raise ValueError(f"shape must be one of {VALID_SHAPES}, got {self.shape}")
        if self.n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {self.n_subjects}")
        if not 1 <= self.n_sites <= len(DEFAULT_SITES):
            raise ValueError(f"n_sites must be in 1..{len(DEFAULT_SITES)}, got {self.n_sites}")

    def key(self) -> str:
        """Short stable hash of all fields and the generator version: the cache file's name."""
        fields = {k: v for k, v in asdict(self).items() if k != "neurodegeneration" or v}  # old keys stay valid
        payload = json.dumps({**fields, "generator": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def working_side(self) -> int:
        """Simulation grid: twice the output when that fits the 64^3 template, else the output."""
        return 2 * self.shape if 2 * self.shape <= 64 else self.shape


@dataclass
class Cohort:
    """Images with ground truth: T1 volumes, tissue labels and the subjects' attributes."""

    images: np.ndarray  # float32 (N, S, S, S) T1 intensities (not z-scored)
    labels: np.ndarray  # uint8 (N, S, S, S): 0 background, 1 CSF, 2 GM, 3 WM
    age: np.ndarray  # float32 (N,) chronological age in years
    bio_age: np.ndarray  # float32 (N,) age + N(0, 4 y): what the anatomy reflects
    sex: np.ndarray  # int8 (N,) 0 female / 1 male
    site: np.ndarray  # int16 (N,) index into site_names
    site_names: list[str]
    diagnosis: np.ndarray | None = None  # int8 (N,) 1 neurodegenerative disease / 0 not; None: not simulated
    records: Any = None  # fedsim.data.clinical.Records: the clinical record of each row, where there is one

    def __len__(self) -> int:
        return len(self.age)


@dataclass(frozen=True)
class _Subject:
    image: np.ndarray
    labels: np.ndarray
    age: float
    bio_age: float
    sex: int
    diagnosis: int


# --------------------------------------------------------------------------- one subject


def _block_average(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor^3 blocks of the last three axes (partial-volume downsampling)."""
    if factor == 1:
        return volume
    *lead, x, y, z = volume.shape
    blocks = volume.reshape(*lead, x // factor, factor, y // factor, factor, z // factor, factor)
    return blocks.mean(axis=(-5, -3, -1))


def _bias_field(rng: np.random.Generator, site: SiteProfile, side: int, brain: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field: a quadratic polynomial, mostly the site's own coil pattern.

    The site pattern comes from the site's name (stable across runs), so sites stay distinguishable.
    """
    site_rng = np.random.default_rng(zlib.crc32(site.name.encode()))
    coeffs = 0.75 * site_rng.standard_normal(9) + 0.45 * rng.standard_normal(9)
    u = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    x, y, z = np.meshgrid(u, u, u, indexing="ij", sparse=True)
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    poly = sum(c * t for c, t in zip(coeffs, terms, strict=True))
    poly = poly - poly[brain].mean()
    poly /= max(float(np.abs(poly[brain]).max()), 1e-6)
    return np.exp(0.5 * site.bias_strength * poly).astype(np.float32)


def _synthesize_t1(
    rng: np.random.Generator, tissues: np.ndarray, site: SiteProfile, atrophy: float
) -> np.ndarray:
    """Scanner model on (3, S^3) CSF/GM/WM fractions: contrast, texture, bias field, Rician noise."""
    csf_c, gm_c, wm_c = site.contrast
    spread = wm_c - gm_c  # grey/white contrast fades with age
    gm_c, wm_c = gm_c + 0.10 * atrophy * spread, wm_c - 0.15 * atrophy * spread
    weights = np.array([csf_c, gm_c, wm_c], dtype=np.float32)
    image = np.einsum("c,cxyz->xyz", weights, tissues)  # numpy loops, no BLAS threads
    side = image.shape[0]
    texture = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32), sigma=0.7)
    image *= 1.0 + 0.03 * texture / texture.std()
    image *= _bias_field(rng, site, side, tissues.sum(0) > 0.5)
    noise = site.noise_sigma * rng.standard_normal((2, *image.shape)).astype(np.float32)
    return np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)


def _simulate_subject(spec: CohortSpec, index: int, session: int = 0) -> _Subject:
    """One subject, seeded from (seed, index) only, so results never depend on worker count.

    `session` > 0 scans the same anatomy again: the scanner's texture, bias field and noise are drawn
    from (seed, index, session) instead (a later visit, for re-identification across scans)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index]))
    site = DEFAULT_SITES[index % spec.n_sites]
    sex = int(rng.integers(2))
    age = float(rng.uniform(*site.age_range))
    bio_age = age + BIO_AGE_SD * float(rng.standard_normal())
    atrophy = atrophy_factor(bio_age)
    diagnosis, severity = _diagnosis(spec, index, site, age) if spec.neurodegeneration else (0, 0.0)
    head_scale = 1.0 + (0.02 if sex else -0.02) + 0.035 * float(rng.standard_normal())
    angles = np.deg2rad(4.0 * rng.standard_normal(3))
    base = anatomy_base()
    warp = Warp(
        head_scale=head_scale,
        rotation=rotation_matrix(angles),
        elastic=elastic_field(rng, spec.working_side, base.fov_mm),
        ventricle_scale=1.0 + 0.45 * atrophy + DX_VENTRICLES * severity,
    )
    fine = warp_tissues(atrophied_tissues(base, bio_age, severity), base, warp)
    tissues = _block_average(fine, spec.working_side // spec.shape)
    background = np.clip(1.0 - tissues.sum(0), 0.0, 1.0)
    labels = np.concatenate([background[None], tissues]).argmax(0).astype(np.uint8)
    scanner = rng if session == 0 else np.random.default_rng(np.random.SeedSequence([spec.seed, index, session]))
    image = _synthesize_t1(scanner, tissues, site, atrophy)
    return _Subject(image=image.astype(np.float32), labels=labels, age=age, bio_age=bio_age, sex=sex,
                    diagnosis=diagnosis)


def _diagnosis(spec: CohortSpec, index: int, site: SiteProfile, age: float) -> tuple[int, float]:
    """A neurodegenerative diagnosis (Alzheimer-like: medial temporal and ventricular atrophy beyond
    ageing) and its severity, drawn from a stream of its own. Prevalence rises with age, up to the
    site's enrichment (a memory clinic sees more cases than a population study)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, index, DX_STREAM]))
    prevalence = site.dx_enrichment / (1.0 + np.exp(-(age - DX_ONSET_AGE) / DX_ONSET_WIDTH))
    if rng.random() >= prevalence:
        return 0, 0.0
    return 1, float(rng.uniform(DX_MIN_SEVERITY, 1.0))


# --------------------------------------------------------------------------- cohort


def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _simulate_all(spec: CohortSpec, workers: int) -> list[_Subject]:
    """Subjects in index order, over a process pool when it pays off."""
    indices = range(spec.n_subjects)
    in_daemon = multiprocessing.current_process().daemon  # daemons may not have children
    if workers <= 1 or spec.n_subjects < MIN_SUBJECTS_FOR_POOL or in_daemon:
        return [_simulate_subject(spec, i) for i in indices]
    chunk = max(1, spec.n_subjects // (4 * workers))
    # fork: no re-import of the caller's __main__ (scripts need no main guard) and no start-up cost
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_simulate_subject, [spec] * spec.n_subjects, indices, chunksize=chunk))


def generate_cohort(spec: CohortSpec, *, workers: int | None = None) -> Cohort:
    """Simulate the whole cohort (deterministic from ``spec``; ``workers`` only changes speed)."""
    subjects = _simulate_all(spec, _default_workers() if workers is None else workers)
    return Cohort(
        images=np.stack([s.image for s in subjects]),
        labels=np.stack([s.labels for s in subjects]),
        age=np.array([s.age for s in subjects], dtype=np.float32),
        bio_age=np.array([s.bio_age for s in subjects], dtype=np.float32),
        sex=np.array([s.sex for s in subjects], dtype=np.int8),
        site=(np.arange(spec.n_subjects) % spec.n_sites).astype(np.int16),
        site_names=[s.name for s in DEFAULT_SITES[: spec.n_sites]],
        diagnosis=np.array([s.diagnosis for s in subjects], dtype=np.int8) if spec.neurodegeneration else None,
    )


def rescan(spec: CohortSpec, indices: list[int], *, session: int = 1) -> np.ndarray:
    """Images (len(indices), S, S, S) of the cohort's subjects scanned again in session `session`:
    same anatomy and site, new scanner noise (not cached: a few subjects at a time)."""
    return np.stack([_simulate_subject(spec, i, session).image for i in indices])


def tissue_fractions(labels: np.ndarray) -> np.ndarray:
    """(N, 3) CSF / GM / WM share of intracranial (non-background) volume: the classic age markers."""
    flat = labels.reshape(len(labels), -1)
    counts = np.stack([(flat == k).sum(axis=1) for k in (1, 2, 3)], axis=1).astype(np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


# --------------------------------------------------------------------------- disk cache

_ARRAYS = ("images", "labels", "age", "bio_age", "sex", "site")


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    root = cache_dir or os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim"
    return Path(root) / "cohorts"


def _read_cached(path: Path, spec: CohortSpec) -> Cohort | None:
    """The cached cohort, or None when it is missing, unreadable or not of this spec's size."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            cohort = Cohort(**{k: npz[k] for k in _ARRAYS}, site_names=[str(s) for s in npz["site_names"]],
                            diagnosis=npz["diagnosis"] if "diagnosis" in npz.files else None)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    expected = (spec.n_subjects,) + (spec.shape,) * 3
    return cohort if cohort.images.shape == expected and (cohort.diagnosis is not None) == spec.neurodegeneration \
        else None


def _write_atomic(path: Path, cohort: Cohort) -> None:
    """Write to a temporary file beside the target, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            arrays = {k: getattr(cohort, k) for k in _ARRAYS}
            if cohort.diagnosis is not None:
                arrays["diagnosis"] = cohort.diagnosis
            np.savez(fh, **arrays, site_names=np.array(cohort.site_names))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Inter-process lock so that parallel clients generate a missing cohort once, not N times."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep the cache consistent
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_cohort(spec: CohortSpec, *, cache_dir: str | os.PathLike | None = None) -> Cohort:
    """The cohort for ``spec`` from ``<cache>/cohorts/<key>.npz``, generated and stored on a miss.

    The cache root is ``cache_dir``, else ``$FEDSIM_CACHE``, else ``~/.cache/fedsim``.
    """
    path = _cache_dir(cache_dir) / f"{spec.key()}.npz"
    cohort = _read_cached(path, spec)
    if cohort is not None:
        return cohort
    with _exclusive(path.with_suffix(".lock")):
        cohort = _read_cached(path, spec)  # another process may have made it while we waited
        if cohort is None:
            cohort = generate_cohort(spec)
            _write_atomic(path, cohort)
    return cohort
