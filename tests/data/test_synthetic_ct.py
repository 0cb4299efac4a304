"""The synthetic head CT: skull shell, tissue Hounsfield units, windowing, sites, determinism, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from fedsim.data.datasets import load_dataset
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.data.synthetic_ct import (
    CT_SITES,
    CTSpec,
    generate_ct_cohort,
    load_ct_cohort,
    synthesize_ct,
    window,
)
from fedsim.scenario import DataConfig

SPEC = CTSpec(n_subjects=6, shape=32, n_sites=3, seed=0)


@pytest.fixture(scope="module")
def mri_labels() -> np.ndarray:
    return load_cohort(SPEC.mri()).labels


@pytest.fixture(scope="module")
def ct():
    return load_ct_cohort(SPEC)


def test_bone_shell_seals_the_brain_and_never_overlaps_it(mri_labels: np.ndarray):
    hu, labels = synthesize_ct(mri_labels[0], np.random.default_rng(0), CT_SITES[0])
    brain = labels > 0
    bone, air = hu > 500, hu < -500
    assert bone.sum() > 0.2 * brain.sum()  # a real shell, not a few voxels
    assert not (bone & brain).any()
    assert not (ndimage.binary_dilation(brain) & air).any()  # every way out of the brain crosses the skull
    centre = np.array(ndimage.center_of_mass(brain)).round().astype(int)
    column = hu[centre[0], centre[1], centre[2]:]  # straight up from the brain's centre: brain, bone, scalp, air
    first_bone = int(np.argmax(column > 500))
    assert first_bone > 0 and (column[first_bone:] < -500).any()
    assert 700 <= np.median(hu[bone]) <= 1500


def test_ct_keeps_the_mri_subjects_on_a_wider_field(ct, mri_labels: np.ndarray):
    mri = load_cohort(SPEC.mri())
    assert np.array_equal(ct.age, mri.age) and np.array_equal(ct.sex, mri.sex) and np.array_equal(ct.site, mri.site)
    assert ct.site_names == [s.name for s in CT_SITES[:3]]
    assert ct.labels.dtype == np.uint8 and set(np.unique(ct.labels)) == {0, 1, 2, 3}
    ratio = (mri_labels > 0).sum() / (ct.labels > 0).sum()
    assert 1.4 < ratio < 1.9  # 1.18^3: the head is smaller in the CT's wider field of view


def test_tissues_sit_at_their_windowed_values(ct):
    images, labels = ct.images, ct.labels
    assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
    # brain window 0..80 HU: GM ~40 HU -> 0.5, WM ~25 -> 0.31, CSF ~8 -> 0.1 (partial volume pulls CSF up)
    assert abs(np.median(images[labels == 2]) - 0.5) < 0.06
    assert abs(np.median(images[labels == 3]) - 0.31) < 0.06
    assert np.median(images[labels == 1]) < np.median(images[labels == 3]) < np.median(images[labels == 2])
    assert np.median(images[labels == 0]) == 0.0  # air below the window
    assert (images == 1.0).any()  # bone above it
    np.testing.assert_allclose(window(np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0])), [0, 0, 0.5, 1, 1])


def test_sites_differ_in_noise_and_offset(mri_labels: np.ndarray):
    quiet, noisy = CT_SITES[2], CT_SITES[1]  # 5 HU vs 9 HU
    spread = {}
    for site in (quiet, noisy):
        hu, labels = synthesize_ct(mri_labels[0], np.random.default_rng(1), site)
        far_air = hu[:3, :3]  # a corner away from the head: air plus noise only
        spread[site.name] = float(far_air.std())
        assert abs(far_air.mean() - (-1000 + site.offset_hu)) < 2.0
    assert spread[quiet.name] == pytest.approx(quiet.noise_hu, rel=0.15)
    assert spread[noisy.name] == pytest.approx(noisy.noise_hu, rel=0.15)


def test_deterministic_from_the_seed_and_cached(tmp_path: Path):
    spec = CTSpec(n_subjects=3, shape=16, n_sites=2, seed=5)
    first = generate_ct_cohort(spec, cache_dir=tmp_path)
    again = generate_ct_cohort(spec, cache_dir=tmp_path)
    other = generate_ct_cohort(CTSpec(n_subjects=3, shape=16, n_sites=2, seed=6), cache_dir=tmp_path)
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.images, other.images)
    cached = load_ct_cohort(spec, cache_dir=tmp_path)
    assert (tmp_path / "cohorts" / f"{spec.key()}.npz").is_file()
    assert np.array_equal(load_ct_cohort(spec, cache_dir=tmp_path).images, cached.images)
    assert np.array_equal(cached.images, first.images)
    assert spec.key() != CohortSpec(n_subjects=3, shape=16, n_sites=2, seed=5).key()


def test_registered_as_a_dataset():
    config = DataConfig(dataset="synthetic_head_ct", n_subjects=8, shape=16, sites=2)
    cohort = load_dataset(config, seed=0)
    assert cohort.images.shape == (8, 16, 16, 16) and cohort.site_names[0].startswith("site_a_ct")
