"""The embedded synthetic cohort: format, determinism, age signal, cache and shipped template."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedsim.data import synthetic
from fedsim.data.synthetic import (
    DEFAULT_SITES,
    Cohort,
    CohortSpec,
    generate_cohort,
    load_cohort,
    tissue_fractions,
)
from fedsim.data.template import load_template, template_path

ARRAYS = ("images", "labels", "age", "bio_age", "sex", "site")


def assert_same(a: Cohort, b: Cohort) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.site_names == b.site_names


@pytest.fixture(scope="module")
def small() -> Cohort:
    return generate_cohort(CohortSpec(n_subjects=6, shape=16, n_sites=3, seed=1), workers=1)


@pytest.fixture(scope="module")
def aging() -> Cohort:
    """40 subjects at 32^3: enough for the age effects to show (about 2 s)."""
    return generate_cohort(CohortSpec(n_subjects=40, shape=32, n_sites=3, seed=0), workers=2)


# ---------------------------------------------------------------- format


def test_arrays_have_documented_shapes_and_dtypes(small: Cohort) -> None:
    assert len(small) == 6
    assert small.images.shape == (6, 16, 16, 16) and small.images.dtype == np.float32
    assert small.labels.shape == (6, 16, 16, 16) and small.labels.dtype == np.uint8
    for name, dtype in (("age", np.float32), ("bio_age", np.float32), ("sex", np.int8), ("site", np.int16)):
        arr = getattr(small, name)
        assert arr.shape == (6,) and arr.dtype == dtype, name


def test_labels_are_the_four_classes_and_each_subject_has_all(small: Cohort) -> None:
    assert set(np.unique(small.labels)) <= {0, 1, 2, 3}
    for labels in small.labels:
        assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_t1_contrast_follows_the_labels(small: Cohort) -> None:
    # T1: WM brightest, then GM, then CSF, and every intensity finite and non-negative (Rician)
    assert np.isfinite(small.images).all() and (small.images >= 0).all()
    for image, labels in zip(small.images, small.labels, strict=True):
        csf, gm, wm = (image[labels == k].mean() for k in (1, 2, 3))
        assert csf < gm < wm


def test_sites_are_round_robin_and_ages_in_their_range(small: Cohort) -> None:
    assert small.site.tolist() == [0, 1, 2, 0, 1, 2]
    assert small.site_names == [s.name for s in DEFAULT_SITES[:3]]
    for age, site in zip(small.age, small.site, strict=True):
        lo, hi = DEFAULT_SITES[site].age_range
        assert lo <= age <= hi


def test_each_site_scans_with_its_own_scanner(aging: Cohort) -> None:
    """The non-IID split is in the pixels: in air the noise is Rician at the site's sigma (Rayleigh:
    std = sigma * sqrt(2 - pi / 2)), and tissue intensities follow the site's contrast."""
    rayleigh = np.sqrt(2 - np.pi / 2)
    tissue = {}
    for s in range(3):
        rows = np.flatnonzero(aging.site == s)
        air = np.mean([aging.images[i][:4, :4, :4].std() for i in rows])  # a corner outside the head
        assert air == pytest.approx(DEFAULT_SITES[s].noise_sigma * rayleigh, rel=0.1), s
        tissue[s] = [np.mean([np.median(aging.images[i][aging.labels[i] == k]) for i in rows]) for k in (1, 2, 3)]
    for k in range(3):  # CSF, GM and WM each rank the sites as their contrasts do
        by_profile = sorted(range(3), key=lambda s: DEFAULT_SITES[s].contrast[k])
        assert sorted(range(3), key=lambda s: tissue[s][k]) == by_profile, k


def test_tissue_fractions_are_shares_of_intracranial_volume() -> None:
    labels = np.array([[0, 1, 2, 2, 3, 3, 3, 0], [0, 0, 0, 0, 0, 0, 2, 2]], dtype=np.uint8)
    np.testing.assert_allclose(tissue_fractions(labels), [[1 / 6, 2 / 6, 3 / 6], [0, 1, 0]])


# ---------------------------------------------------------------- determinism


def test_same_spec_gives_identical_cohort(small: Cohort) -> None:
    assert_same(small, generate_cohort(CohortSpec(n_subjects=6, shape=16, n_sites=3, seed=1), workers=1))


def test_other_seed_gives_other_subjects(small: Cohort) -> None:
    other = generate_cohort(CohortSpec(n_subjects=6, shape=16, n_sites=3, seed=2), workers=1)
    assert not np.array_equal(other.age, small.age)
    assert not np.array_equal(other.images, small.images)


def test_worker_count_does_not_change_the_data() -> None:
    spec = CohortSpec(n_subjects=synthetic.MIN_SUBJECTS_FOR_POOL, shape=16, n_sites=2, seed=5)
    assert_same(generate_cohort(spec, workers=1), generate_cohort(spec, workers=2))


def test_a_smaller_cohort_is_a_prefix_of_a_larger_one(small: Cohort) -> None:
    larger = generate_cohort(CohortSpec(n_subjects=9, shape=16, n_sites=3, seed=1), workers=1)
    np.testing.assert_array_equal(larger.images[:6], small.images)
    np.testing.assert_array_equal(larger.age[:6], small.age)


def test_spec_key_is_stable_and_covers_every_field() -> None:
    spec = CohortSpec(n_subjects=10, shape=16, n_sites=2, seed=3)
    assert spec.key() == CohortSpec(n_subjects=10, shape=16, n_sites=2, seed=3).key()
    changed = [
        dataclasses.replace(spec, n_subjects=11),
        dataclasses.replace(spec, shape=32),
        dataclasses.replace(spec, n_sites=3),
        dataclasses.replace(spec, seed=4),
    ]
    assert len({spec.key(), *(c.key() for c in changed)}) == 5


@pytest.mark.parametrize(
    "fields", [{"shape": 24}, {"n_subjects": 0}, {"n_sites": 0}, {"n_sites": len(DEFAULT_SITES) + 1}]
)
def test_invalid_spec_is_rejected(fields: dict) -> None:
    with pytest.raises(ValueError):
        CohortSpec(**fields)


# ---------------------------------------------------------------- age signal


def test_grey_matter_fraction_falls_with_age(aging: Cohort) -> None:
    fractions = tissue_fractions(aging.labels)
    assert np.corrcoef(fractions[:, 1], aging.age)[0, 1] <= -0.7  # measured -0.82..-0.93 over seeds
    assert np.corrcoef(fractions[:, 0], aging.age)[0, 1] >= 0.5  # CSF grows


def test_biological_age_scatters_about_four_years(aging: Cohort) -> None:
    assert 2.5 < np.std(aging.bio_age - aging.age) < 5.5


def test_males_have_larger_heads(aging: Cohort) -> None:
    icv = (aging.labels > 0).reshape(len(aging), -1).sum(axis=1)
    assert icv[aging.sex == 1].mean() > 1.04 * icv[aging.sex == 0].mean()


# ---------------------------------------------------------------- cache


def test_cache_round_trip_does_not_regenerate(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    spec = CohortSpec(n_subjects=3, shape=16, n_sites=2, seed=7)
    first = load_cohort(spec)
    assert sorted(p.name for p in (tmp_path / "cohorts").glob("*.npz")) == [f"{spec.key()}.npz"]
    assert not list((tmp_path / "cohorts").glob("*.tmp"))

    def boom(*args, **kwargs):
        raise AssertionError("cache miss: generate_cohort was called")

    monkeypatch.setattr(synthetic, "generate_cohort", boom)
    second = load_cohort(spec)
    assert_same(first, second)
    with pytest.raises(AssertionError, match="cache miss"):
        load_cohort(dataclasses.replace(spec, seed=8))


def test_cache_dir_argument_wins_and_a_corrupt_file_is_regenerated(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "env"))
    spec = CohortSpec(n_subjects=2, shape=16, n_sites=1, seed=0)
    path = tmp_path / "arg" / "cohorts" / f"{spec.key()}.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    cohort = load_cohort(spec, cache_dir=tmp_path / "arg")
    assert len(cohort) == 2 and path.stat().st_size > 1000
    assert not (tmp_path / "env").exists()


# ---------------------------------------------------------------- template


def test_template_is_small_and_in_unit_range() -> None:
    with template_path().open("rb") as fh:
        assert len(fh.read()) < 2 * 1024 * 1024
    tpl = load_template()
    assert tpl.shape == 64 and tpl.voxel_mm == pytest.approx(3.0)
    for name in ("t1", "gm", "wm", "csf"):
        arr = getattr(tpl, name)
        assert arr.dtype == np.float32 and arr.shape == (64, 64, 64)
        assert arr.min() >= 0.0 and arr.max() <= 1.0
    brain = tpl.gm + tpl.wm + tpl.csf
    assert brain.max() <= 1.0 + 1e-2
    # a brain, not noise: about 1.4-2.2 litres, mostly grey and white matter
    litres = brain.sum() * tpl.voxel_mm**3 / 1e6
    assert 1.4 < litres < 2.2
    assert tpl.gm.sum() > tpl.wm.sum() > tpl.csf.sum()


def test_a_rescan_is_the_same_anatomy_with_new_scanner_noise(small: Cohort) -> None:
    spec = CohortSpec(n_subjects=6, shape=16, n_sites=3, seed=1)
    np.testing.assert_array_equal(synthetic.rescan(spec, [0, 4], session=0), small.images[[0, 4]])
    again = synthetic.rescan(spec, [0, 4], session=1)
    assert not np.allclose(again, small.images[[0, 4]])
    for k, i in enumerate((0, 4)):  # tissue by tissue the intensities agree; only the noise moved
        for label in (1, 2, 3):
            mask = small.labels[i] == label
            assert abs(again[k][mask].mean() - small.images[i][mask].mean()) < 0.05
        same_person = np.corrcoef(again[k].ravel(), small.images[i].ravel())[0, 1]
        other = np.corrcoef(again[k].ravel(), small.images[(i + 3) % 6].ravel())[0, 1]
        assert same_person > other


def test_two_processes_sharing_a_cold_cache_get_one_identical_cohort(tmp_path) -> None:
    """Two runs started at once on an empty cache: both succeed, with the same cohort, written once."""
    import subprocess
    import sys

    code = ("import hashlib, sys; from fedsim.data.synthetic import CohortSpec, load_cohort; "
            "c = load_cohort(CohortSpec(n_subjects=60, shape=16, seed=5), cache_dir=sys.argv[1]); "
            "print(hashlib.sha256(c.images.tobytes() + c.age.tobytes()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    digests = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and digests[0] == digests[1] and len(digests[0]) == 64
    cached = load_cohort(CohortSpec(n_subjects=60, shape=16, seed=5), cache_dir=tmp_path)
    import hashlib

    assert hashlib.sha256(cached.images.tobytes() + cached.age.tobytes()).hexdigest() == digests[0]
    assert [p.suffix for p in sorted(tmp_path.rglob("*")) if p.is_file()] == [".lock", ".npz"]  # no torn temp
