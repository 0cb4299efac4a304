"""Subject anatomy from the MNI template: age-related atrophy and one smooth spatial warp.

Everything that does not depend on the subject (depth from the brain surface, the field that
pushes the lateral ventricles' walls outwards, coordinate grids) is computed once per process and
cached. Per subject the tissue maps are atrophied on the template grid, then resampled once
(trilinear) through the composition of head size, rotation, a random elastic field and ventricle
enlargement, so the anatomy is blurred by one interpolation only.

Coordinates are millimetres centred on the template cube, axes in the template's RAS order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from fedsim.data.template import load_template

DEEP_CSF_MM = 12.0  # CSF deeper than this below the brain surface is ventricular, not sulcal
VENTRICLE_SMOOTH_MM = 6.0  # smoothing of the ventricle mask whose gradient pushes the walls out
VENTRICLE_WALL_MM = 12.0  # wall displacement per unit of (ventricle_scale - 1)
# medial temporal lobes (hippocampus, entorhinal cortex) in mm from the cube's centre, which is the
# MNI brain's bounding-box centre (scripts/make_template.py): left-right, anterior-posterior, up-down
MTL_CENTRES_MM = ((-26.0, -4.0, -20.0), (26.0, -4.0, -20.0))
MTL_SIGMA_MM = (7.0, 11.0, 7.0)
MTL_MAX_LOSS = 0.6  # share of the region's grey matter lost at full disease severity


@dataclass(frozen=True)
class AnatomyBase:
    """Subject-independent maps on the template grid (float32, read-only by convention)."""

    tissues: np.ndarray  # (3, T, T, T): CSF, GM, WM fractions
    cortical_weight: np.ndarray  # exp(-depth / 7 mm): where cortical thinning acts
    wm_weight: np.ndarray  # white-matter loss profile, stronger near the surface, mean ~1 over WM
    ventricle_push: np.ndarray  # (3, T, T, T) unitless, points into the lateral ventricles, max norm 1
    mtl_weight: np.ndarray  # (T, T, T) 0..1, Gaussian over both medial temporal lobes: where disease acts
    tissue_box: np.ndarray  # (2, 3) template-index bounds outside which all tissue is 0
    push_box: np.ndarray  # (2, 3) the same for ventricle_push
    voxel_mm: float

    @property
    def fov_mm(self) -> float:
        return self.tissues.shape[1] * self.voxel_mm


@dataclass(frozen=True)
class Warp:
    """One subject's spatial parameters; all act in a single resampling."""

    head_scale: float  # isotropic size relative to MNI
    rotation: np.ndarray  # (3, 3) rotation matrix
    elastic: np.ndarray  # (3, W, W, W) displacement in mm on the working grid
    ventricle_scale: float  # lateral ventricles' enlargement, 1 = none; walls move 12 mm x (scale - 1)


def _lateral_ventricles(csf: np.ndarray, depth_mm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Largest deep-CSF component above the brain's centroid (excludes 3rd/4th ventricle, cisterns)."""
    labels, n = ndimage.label((csf > 0.5) & (depth_mm > DEEP_CSF_MM))
    if n == 0:
        raise RuntimeError("template has no deep CSF: cannot locate the ventricles")
    ids = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(csf), labels, ids)
    z_centres = np.array([c[2] for c in ndimage.center_of_mass(np.ones_like(csf), labels, ids)])
    z_brain = ndimage.center_of_mass(brain)[2]
    sizes[z_centres < z_brain] = 0
    return labels == ids[int(np.argmax(sizes))]


def _support_box(volumes: np.ndarray) -> np.ndarray:
    """(2, 3) open bounds in voxel index: trilinear samples outside them are exactly 0."""
    nonzero = np.argwhere(np.any(volumes != 0, axis=0))
    return np.stack([nonzero.min(0) - 1, nonzero.max(0) + 1]).astype(np.float32)


def _medial_temporal_weight(side: int, voxel_mm: float) -> np.ndarray:
    """Where a neurodegenerative disease's grey-matter loss concentrates (hippocampi first)."""
    axis = (np.arange(side, dtype=np.float32) + 0.5) * voxel_mm - side * voxel_mm / 2
    grid = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    weight = sum(np.exp(-0.5 * sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, MTL_SIGMA_MM, strict=True)))
                 for centre in MTL_CENTRES_MM)
    return np.clip(weight, 0.0, 1.0).astype(np.float32)


@lru_cache(maxsize=1)
def anatomy_base() -> AnatomyBase:
    """Derive depth-dependent atrophy weights and the ventricle map from the shipped template."""
    tpl = load_template()
    tissues = np.stack([tpl.csf, tpl.gm, tpl.wm]).astype(np.float32)
    brain = tissues.sum(0) > 0.5
    depth = ndimage.distance_transform_edt(brain) * tpl.voxel_mm
    ventricles = _lateral_ventricles(tpl.csf, depth, brain)
    smooth = ndimage.gaussian_filter(ventricles.astype(np.float32), sigma=VENTRICLE_SMOOTH_MM / tpl.voxel_mm)
    push = np.stack(np.gradient(smooth, tpl.voxel_mm))
    push /= np.linalg.norm(push, axis=0).max()
    wm_profile = 0.5 + np.exp(-depth / 10.0)
    wm_profile /= np.average(wm_profile, weights=tpl.wm)
    return AnatomyBase(
        tissues=tissues,
        cortical_weight=np.exp(-depth / 7.0).astype(np.float32),
        wm_weight=wm_profile.astype(np.float32),
        ventricle_push=push.astype(np.float32),
        mtl_weight=_medial_temporal_weight(tpl.shape, tpl.voxel_mm),
        tissue_box=_support_box(tissues),
        push_box=_support_box(push),
        voxel_mm=tpl.voxel_mm,
    )


@lru_cache(maxsize=4)
def working_grid(side: int) -> np.ndarray:
    """(3, side, side, side) mm coordinates of voxel centres of a grid covering the template's field."""
    fov = anatomy_base().fov_mm
    axis = ((np.arange(side, dtype=np.float32) + 0.5) * (fov / side) - fov / 2).astype(np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))
    grid.setflags(write=False)
    return grid


def atrophy_factor(bio_age: float) -> float:
    """0 at 20 years, 1 at 90 (capped at 1.3): drives thinning, ventricles and contrast loss."""
    return float(np.clip((bio_age - 20.0) / 70.0, 0.0, 1.3))


def atrophied_tissues(base: AnatomyBase, bio_age: float, disease: float = 0.0) -> np.ndarray:
    """Cortical thinning (GM -> CSF, strongest at the surface) and white-matter loss after 50; a
    neurodegenerative disease of severity `disease` (0..1) adds grey-matter loss in the medial
    temporal lobes.

    Tissue moves to CSF, so intracranial volume is preserved and the GM fraction falls with age.
    """
    atrophy = atrophy_factor(bio_age)
    wm_atrophy = float(np.clip((bio_age - 50.0) / 40.0, 0.0, 1.3))
    csf, gm, wm = base.tissues
    loss = 0.40 * atrophy * base.cortical_weight + 0.06 * atrophy
    if disease:
        loss = loss + MTL_MAX_LOSS * disease * base.mtl_weight
    gm_loss = gm * np.clip(loss, 0.0, 0.9)
    wm_loss = wm * np.clip(0.12 * wm_atrophy * base.wm_weight, 0.0, 0.6)
    return np.stack([csf + gm_loss + wm_loss, gm - gm_loss, wm - wm_loss])


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def elastic_field(
    rng: np.random.Generator, side: int, fov_mm: float, *, sigma_mm: float = 10.0, amplitude_mm: float = 2.5
) -> np.ndarray:
    """Smooth random displacement (3, side^3) in mm: a separable Gaussian-RBF sum, unit variance x amplitude.

    Separable kernels make it three small contractions instead of full-size 3D filtering.
    """
    spacing = 0.75 * sigma_mm
    n_ctrl = int(np.ceil(fov_mm / spacing)) + 3
    ctrl = (np.arange(n_ctrl) - 1) * spacing - fov_mm / 2
    pos = (np.arange(side) + 0.5) * (fov_mm / side) - fov_mm / 2
    kernel = np.exp(-0.5 * ((pos[:, None] - ctrl[None, :]) / sigma_mm) ** 2)
    kernel /= np.sqrt((kernel**2).sum(axis=1, keepdims=True))  # unit variance everywhere
    coeffs = rng.standard_normal((3, n_ctrl, n_ctrl, n_ctrl))
    # two-operand einsums run in numpy's own loops: BLAS threads would spin against pool workers
    field = np.einsum("dijk,ck->dijc", coeffs, kernel)
    field = np.einsum("dijc,bj->dibc", field, kernel)
    field = np.einsum("dibc,ai->dabc", field, kernel)
    return (amplitude_mm * field).astype(np.float32)


def _to_template_index(mm: np.ndarray, base: AnatomyBase) -> np.ndarray:
    """mm (centred) -> fractional template voxel index, in place."""
    mm += base.fov_mm / 2
    mm /= base.voxel_mm
    mm -= 0.5
    return mm


def _sample(volumes: np.ndarray, idx: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Trilinear samples (C, N) of volumes (C, T^3) at voxel indices (3, N); skips empty space (speed)."""
    inside = np.ones(idx.shape[1], dtype=bool)
    for axis in range(3):
        inside &= (idx[axis] > box[0, axis]) & (idx[axis] < box[1, axis])
    points = idx[:, inside]
    out = np.zeros((len(volumes), idx.shape[1]), dtype=np.float32)
    for c, volume in enumerate(volumes):
        out[c, inside] = ndimage.map_coordinates(volume, points, order=1, mode="constant")
    return out


def warp_tissues(tissues: np.ndarray, base: AnatomyBase, warp: Warp) -> np.ndarray:
    """Resample (3, T^3) tissue maps onto the working grid through the subject's warp, in one pass.

    Backward mapping: each working voxel looks up its source point in template space.
    """
    side = warp.elastic.shape[1]
    grid = working_grid(side).reshape(3, -1)
    # individual head: scale and rotate about the cube centre, then the elastic field
    linear = (warp.rotation.T / warp.head_scale).astype(np.float32)
    src = np.einsum("ij,jn->in", linear, grid)  # not `@`: see elastic_field on BLAS threads
    src += warp.elastic.reshape(3, -1)
    # ventricle enlargement: look up source points nearer the ventricles, i.e. walls move outwards
    # along their normals (the smoothed mask's gradient); any fold stays inside the CSF
    if warp.ventricle_scale != 1.0:
        push = _sample(base.ventricle_push, _to_template_index(src.copy(), base), base.push_box)
        src += np.float32(VENTRICLE_WALL_MM * (warp.ventricle_scale - 1.0)) * push
    out = _sample(tissues, _to_template_index(src, base), base.tissue_box)
    return out.reshape(3, side, side, side)
