"""Split a cohort into the server's held-out test set and per-client train / validation sets.

Partitioners are plug-ins (`data.partition.by`): by site (the natural non-IID split), IID, and a
Dirichlet skew over age bins. Everything is deterministic from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.registry import registry
from fedsim.scenario import DataConfig, PartitionConfig

PARTITIONERS = registry("partitioner")


@dataclass(frozen=True)
class ClientSplit:
    train: list[int]
    val: list[int]


@dataclass(frozen=True)
class FederationSplit:
    """Indices into the cohort: the server's test set and each client's own data."""

    test: list[int]
    clients: list[ClientSplit]

    def sizes(self) -> list[dict[str, int]]:
        return [{"client": i, "train": len(c.train), "val": len(c.val)} for i, c in enumerate(self.clients)]


def split_federation(
    *, site: np.ndarray, age: np.ndarray, config: DataConfig, n_clients: int, seed: int
) -> FederationSplit:
    """Hold out a site-stratified test set, partition the rest, then split each client's validation set."""
    rng = np.random.default_rng([seed, 1])
    test, pool = [], []
    for s in np.unique(site):
        members = rng.permutation(np.flatnonzero(site == s))
        n_test = max(1, round(len(members) * config.test_fraction))
        test += members[:n_test].tolist()
        pool += members[n_test:].tolist()
    pool_arr = np.array(sorted(pool))
    partitioner = PARTITIONERS.get(config.partition.by)
    parts = partitioner(pool_arr, site=site, age=age, n_clients=n_clients, config=config.partition, rng=rng)
    clients = []
    for i, part in enumerate(parts):
        if len(part) < config.partition.min_size + (1 if config.val_fraction > 0 else 0):
            raise ValueError(
                f"data.partition: client {i} got only {len(part)} subjects; "
                "use more data.n_subjects, fewer federation.clients or a larger alpha"
            )
        part = rng.permutation(np.asarray(part, dtype=int))
        n_val = round(len(part) * config.val_fraction) if config.val_fraction > 0 else 0
        n_val = max(1, n_val) if config.val_fraction > 0 else 0
        clients.append(ClientSplit(train=sorted(part[n_val:].tolist()), val=sorted(part[:n_val].tolist())))
    return FederationSplit(test=sorted(test), clients=clients)


@PARTITIONERS.register("site")
def by_site(pool: np.ndarray, *, site: np.ndarray, n_clients: int, **_: object) -> list[np.ndarray]:
    """One client per site: the natural split, non-IID in contrast, noise and age range."""
    sites = np.unique(site)
    if len(sites) != n_clients:
        raise ValueError(f"federation.clients: must equal the number of sites ({len(sites)})")
    return [pool[site[pool] == s] for s in sites]


@PARTITIONERS.register("iid")
def iid(pool: np.ndarray, *, n_clients: int, rng: np.random.Generator, **_: object) -> list[np.ndarray]:
    """Uniformly random, equal-sized shards."""
    return np.array_split(rng.permutation(pool), n_clients)


@PARTITIONERS.register("dirichlet")
def dirichlet(
    pool: np.ndarray,
    *,
    age: np.ndarray,
    n_clients: int,
    config: PartitionConfig,
    rng: np.random.Generator,
    **_: object,
) -> list[np.ndarray]:
    """Label skew: each age bin is spread over clients with proportions ~ Dir(alpha)."""
    edges = np.quantile(age[pool], np.linspace(0, 1, config.age_bins + 1)[1:-1])
    bins = np.digitize(age[pool], edges)
    for _attempt in range(100):  # redraw until every client has enough data
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for b in np.unique(bins):
            members = rng.permutation(pool[bins == b])
            shares = rng.dirichlet(np.full(n_clients, config.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client] += chunk.tolist()
        if min(len(p) for p in parts) >= config.min_size + 1:
            break
    return [np.array(sorted(p), dtype=int) for p in parts]
