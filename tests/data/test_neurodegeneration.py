"""The cohort's neurodegeneration diagnosis: a label of its own that leaves every existing image as it was."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedsim.data import synthetic
from fedsim.data.anatomy import anatomy_base, atrophied_tissues
from fedsim.data.synthetic import DEFAULT_SITES, CohortSpec, generate_cohort, load_cohort, tissue_fractions

SPEC = CohortSpec(n_subjects=24, shape=16, n_sites=3, seed=4, neurodegeneration=True)


@pytest.fixture(scope="module")
def pair() -> tuple[synthetic.Cohort, synthetic.Cohort]:
    """The same 24 subjects with and without the disease model."""
    return generate_cohort(SPEC, workers=1), generate_cohort(dataclasses.replace(SPEC, neurodegeneration=False),
                                                             workers=1)


def test_existing_cohorts_keep_their_cache_key_and_have_no_diagnosis(pair) -> None:
    assert CohortSpec(n_subjects=10, shape=16, n_sites=2, seed=3).key() == "702b0958bd6f30dc"  # as before the label
    assert SPEC.key() != dataclasses.replace(SPEC, neurodegeneration=False).key()
    assert pair[1].diagnosis is None


def test_only_diagnosed_subjects_change_and_they_lose_tissue_to_csf(pair) -> None:
    sick, plain = pair
    dx = sick.diagnosis
    assert dx.dtype == np.int8 and set(np.unique(dx)) == {0, 1}
    for name in ("age", "bio_age", "sex", "site"):
        np.testing.assert_array_equal(getattr(sick, name), getattr(plain, name))
    for i in np.flatnonzero(dx == 0):
        np.testing.assert_array_equal(sick.images[i], plain.images[i])
    for i in np.flatnonzero(dx == 1):
        assert not np.array_equal(sick.images[i], plain.images[i])
        assert tissue_fractions(sick.labels[i:i + 1])[0, 0] > tissue_fractions(plain.labels[i:i + 1])[0, 0]


def test_disease_takes_grey_matter_in_the_medial_temporal_lobes_not_elsewhere() -> None:
    base = anatomy_base()
    healthy, sick = atrophied_tissues(base, 70.0), atrophied_tissues(base, 70.0, disease=1.0)
    lost = healthy[1] - sick[1]
    mtl, far = base.mtl_weight > 0.5, base.mtl_weight < 1e-3
    assert lost[mtl].mean() > 0.1 and np.abs(lost[far]).max() < 1e-3
    np.testing.assert_allclose(sick.sum(0), healthy.sum(0), atol=1e-5)  # tissue becomes CSF: volume kept


def test_prevalence_rises_with_age_and_with_a_memory_clinics_enrichment() -> None:
    spec = CohortSpec(n_subjects=1, seed=0, neurodegeneration=True)
    clinic, study = DEFAULT_SITES[2], DEFAULT_SITES[3]  # enrichment 0.9 / 0.5

    def rate(site, age):
        return np.mean([synthetic._diagnosis(spec, i, site, age)[0] for i in range(600)])

    assert rate(clinic, 50.0) < 0.1 < rate(clinic, 65.0) < rate(clinic, 85.0)
    assert rate(study, 85.0) < rate(clinic, 85.0)
    severities = [synthetic._diagnosis(spec, i, clinic, 90.0)[1] for i in range(200)]
    assert min(s for s in severities if s) >= synthetic.DX_MIN_SEVERITY and max(severities) <= 1.0


def test_the_diagnosis_survives_the_cache(tmp_path) -> None:
    spec = dataclasses.replace(SPEC, n_subjects=6)
    first = load_cohort(spec, cache_dir=tmp_path)
    again = load_cohort(spec, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.diagnosis, again.diagnosis)
    assert load_cohort(dataclasses.replace(spec, neurodegeneration=False), cache_dir=tmp_path).diagnosis is None
