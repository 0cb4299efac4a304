"""Embedded synthetic head CT: the subjects of the synthetic MRI cohort, scanned by CT scanners.

Each CT is built from the same subject's MRI label map (so age, sex, site and anatomy are shared
with `synthetic_brain`): the tissue maps are resampled to the wider field of view of a head CT
(~226 mm instead of 192 mm, so skull and scalp fit), a skull shell and scalp are wrapped around the
intracranial space, tissues get Hounsfield units with per-subject jitter, and each site's scanner adds
its calibration offset, streaks and noise. Images are windowed (brain window, level 40 / width 80 HU)
and scaled to [0, 1] as CT pipelines do; labels are those of the MRI cohort: 0 background (air,
scalp, bone), 1 CSF, 2 GM, 3 WM, so the same segmentation task works on both modalities. The inner
table of the skull lies where the intracranial fraction falls below one half: brain voxels never
contain bone (their non-tissue share is CSF/dura), which keeps the windowed brain free of
bone-bright partial volumes. Deterministic from the spec; cached beside the MRI cohorts.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
from monai.transforms import ScaleIntensityRange
from scipy import ndimage

from fedsim.data.anatomy import anatomy_base
from fedsim.data.synthetic import (
    GENERATOR_VERSION,
    Cohort,
    CohortSpec,
    _cache_dir,
    _exclusive,
    _read_cached,
    _write_atomic,
    load_cohort,
)

CT_GENERATOR_VERSION = "1"  # bump whenever generated CT data changes: it invalidates cached CT cohorts
CT_FOV_SCALE = 1.18  # CT field of view / MRI field of view (226 / 192 mm)
WINDOW = (40.0, 80.0)  # brain window (level, width) in HU
SKULL_MM, SCALP_MM = 7.0, 5.0  # thickness; at least 1.5 / 1 voxel so the shell stays closed
_STREAM = 0xC7  # separates the CT's random stream from the MRI generator's


@dataclass(frozen=True)
class TissueHU:
    """Mean Hounsfield units of one subject's tissues (jittered per subject)."""

    csf: float = 8.0
    gm: float = 40.0
    wm: float = 25.0
    bone: float = 1100.0
    scalp: float = 40.0
    air: float = -1000.0


@dataclass(frozen=True)
class CTSiteProfile:
    """One simulated CT scanner: calibration offset, streak strength and quantum noise, in HU."""

    name: str
    offset_hu: float
    streak_hu: float
    noise_hu: float


CT_SITES: tuple[CTSiteProfile, ...] = (
    CTSiteProfile("site_a_ct_64slice", 0.0, 3.0, 6.0),
    CTSiteProfile("site_b_ct_16slice_lowdose", 3.0, 6.0, 9.0),
    CTSiteProfile("site_c_ct_dual_source", -2.0, 2.0, 5.0),
    CTSiteProfile("site_d_ct_64slice_old", 2.0, 5.0, 8.0),
    CTSiteProfile("site_e_ct_128slice", -1.0, 2.5, 5.5),
    CTSiteProfile("site_f_ct_16slice", 4.0, 5.0, 9.5),
    CTSiteProfile("site_g_ct_photon_counting", -3.0, 1.5, 5.0),
    CTSiteProfile("site_h_ct_mobile", 1.0, 8.0, 10.0),
)


@dataclass(frozen=True)
class CTSpec:
    """Everything that determines a CT cohort; the MRI cohort with the same fields is its source."""

    n_subjects: int = 200
    shape: int = 32
    n_sites: int = 3
    seed: int = 0

    def mri(self) -> CohortSpec:
        """The MRI cohort whose subjects (label maps, ages, sexes, sites) the CT reuses."""
        return CohortSpec(n_subjects=self.n_subjects, shape=self.shape, n_sites=self.n_sites, seed=self.seed)

    def key(self) -> str:
        """Stable hash of the fields and both generator versions: the cache file's name."""
        payload = {**asdict(self), "modality": "ct", "ct": CT_GENERATOR_VERSION, "mri": GENERATOR_VERSION}
        return "ct_" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def widen_field_of_view(labels: np.ndarray) -> np.ndarray:
    """(4, S^3) class fractions of an (S^3) label map seen through a CT_FOV_SCALE wider field (trilinear)."""
    side = labels.shape[-1]
    centre = (side - 1) / 2.0
    out = np.empty((4, side, side, side), dtype=np.float32)
    for c in range(4):
        out[c] = ndimage.affine_transform((labels == c).astype(np.float32), np.full(3, CT_FOV_SCALE),
                                          offset=centre * (1.0 - CT_FOV_SCALE), order=1,
                                          mode="constant", cval=float(c == 0))
    return out


def _streaks(rng: np.random.Generator, side: int, amplitude: float) -> np.ndarray:
    """A few thin lines through the head's centre in every axial plane (beam-hardening-like streaks)."""
    u = np.arange(side, dtype=np.float32) - (side - 1) / 2.0
    x, y = np.meshgrid(u, u, indexing="ij")
    plane = np.zeros((side, side), dtype=np.float32)
    for angle, sign in zip(rng.uniform(0, np.pi, 3), rng.choice([-1.0, 1.0], 3), strict=True):
        dist = x * np.sin(angle) - y * np.cos(angle)
        plane += sign * amplitude * np.exp(-0.5 * (dist / 0.6) ** 2)
    return np.broadcast_to(plane[:, :, None], (side, side, side))


def synthesize_ct(labels: np.ndarray, rng: np.random.Generator, site: CTSiteProfile) -> tuple[np.ndarray, np.ndarray]:
    """One subject's CT in HU and its label map, both on the CT's (wider) grid."""
    side = labels.shape[-1]
    fractions = widen_field_of_view(labels)
    intracranial = fractions[0] < 0.5
    ct_labels = np.where(intracranial, fractions[1:].argmax(0) + 1, 0).astype(np.uint8)
    hu = TissueHU(csf=8.0 + 2.0 * rng.standard_normal(), gm=40.0 + 1.5 * rng.standard_normal(),
                  wm=25.0 + 1.5 * rng.standard_normal(), bone=float(rng.uniform(900.0, 1400.0)),
                  scalp=40.0 + 3.0 * rng.standard_normal())
    voxel_mm = anatomy_base().fov_mm * CT_FOV_SCALE / side
    skull_mm, scalp_mm = max(SKULL_MM, 1.5 * voxel_mm), max(SCALP_MM, 1.01 * voxel_mm)
    depth = ndimage.distance_transform_edt(~intracranial) * voxel_mm  # mm outside the inner table
    outside = np.where(depth <= skull_mm, hu.bone, np.where(depth <= skull_mm + scalp_mm, hu.scalp, hu.air))
    outside = np.where(intracranial, hu.csf, outside)  # CSF/dura fills the brain voxels' non-tissue share
    image = hu.csf * fractions[1] + hu.gm * fractions[2] + hu.wm * fractions[3] + outside * fractions[0]
    head = depth <= skull_mm + scalp_mm
    image += site.offset_hu + head * _streaks(rng, side, site.streak_hu)
    image += site.noise_hu * rng.standard_normal(image.shape)
    return image.astype(np.float32), ct_labels


def window(hu: np.ndarray, level: float = WINDOW[0], width: float = WINDOW[1]) -> np.ndarray:
    """HU -> [0, 1] through a display window, clipped (MONAI's ScaleIntensityRange)."""
    scale = ScaleIntensityRange(a_min=level - width / 2, a_max=level + width / 2, b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scale(hu), dtype=np.float32)


def generate_ct_cohort(spec: CTSpec, *, cache_dir: str | os.PathLike | None = None) -> Cohort:
    """Scan every subject of the MRI cohort `spec.mri()` (loaded from the same cache) with its site's CT."""
    mri = load_cohort(spec.mri(), cache_dir=cache_dir)
    images, labels = [], []
    for i in range(spec.n_subjects):
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, i, _STREAM]))
        hu, lab = synthesize_ct(mri.labels[i], rng, CT_SITES[int(mri.site[i])])
        images.append(window(hu))
        labels.append(lab)
    return Cohort(images=np.stack(images), labels=np.stack(labels), age=mri.age, bio_age=mri.bio_age,
                  sex=mri.sex, site=mri.site, site_names=[s.name for s in CT_SITES[: spec.n_sites]])


def load_ct_cohort(spec: CTSpec, *, cache_dir: str | os.PathLike | None = None) -> Cohort:
    """The CT cohort for ``spec`` from ``<cache>/cohorts/ct_<key>.npz``, generated and stored on a miss."""
    path = _cache_dir(cache_dir) / f"{spec.key()}.npz"
    cohort = _read_cached(path, spec.mri())
    if cohort is not None:
        return cohort
    with _exclusive(path.with_suffix(".lock")):
        cohort = _read_cached(path, spec.mri())  # another process may have made it while we waited
        if cohort is None:
            cohort = generate_ct_cohort(spec, cache_dir=cache_dir)
            _write_atomic(path, cohort)
    return cohort
