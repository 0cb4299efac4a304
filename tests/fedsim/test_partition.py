import numpy as np
import pytest

from fedsim.data.partition import split_federation
from fedsim.scenario import DataConfig


def _cohort(n=120, sites=3, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(np.arange(sites), n // sites), rng.uniform(20, 90, n)


@pytest.mark.parametrize("by", ["site", "iid", "dirichlet"])
def test_splits_are_disjoint_and_cover_everything(by):
    site, age = _cohort()
    cfg = DataConfig(partition={"by": by, "alpha": 0.5}, sites=3)
    split = split_federation(site=site, age=age, config=cfg, n_clients=3, seed=1)
    rows = split.test + [i for c in split.clients for i in c.train + c.val]
    assert sorted(rows) == list(range(len(site)))
    assert all(len(c.val) >= 1 and len(c.train) >= cfg.partition.min_size for c in split.clients)


def test_site_split_keeps_sites_apart_and_test_is_stratified():
    site, age = _cohort()
    split = split_federation(site=site, age=age, config=DataConfig(sites=3), n_clients=3, seed=0)
    for i, c in enumerate(split.clients):
        assert set(site[c.train + c.val]) == {i}
    assert set(site[split.test]) == {0, 1, 2}


def test_dirichlet_small_alpha_skews_age():
    site, age = _cohort(n=600)
    cfg = DataConfig(partition={"by": "dirichlet", "alpha": 0.1}, sites=3)
    split = split_federation(site=site, age=age, config=cfg, n_clients=4, seed=2)
    means = [age[c.train].mean() for c in split.clients]
    iid = split_federation(site=site, age=age, config=DataConfig(partition={"by": "iid"}, sites=3),
                           n_clients=4, seed=2)
    iid_means = [age[c.train].mean() for c in iid.clients]
    assert np.std(means) > 3 * np.std(iid_means)


def test_deterministic_from_seed():
    site, age = _cohort()
    cfg = DataConfig(partition={"by": "dirichlet"}, sites=3)
    a = split_federation(site=site, age=age, config=cfg, n_clients=3, seed=5)
    b = split_federation(site=site, age=age, config=cfg, n_clients=3, seed=5)
    c = split_federation(site=site, age=age, config=cfg, n_clients=3, seed=6)
    assert a == b and a != c


def test_too_small_partition_is_a_clear_error():
    site, age = _cohort(n=12)
    with pytest.raises(ValueError, match="client .* got only"):
        split_federation(site=site, age=age, config=DataConfig(partition={"by": "iid", "min_size": 4}, sites=3),
                         n_clients=4, seed=0)
