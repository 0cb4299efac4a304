"""Split a cohort into the server's held-out test set and per-client train / validation sets.

Partitioners are plug-ins (`data.partition.by`): by site (the natural non-IID split), IID, a
Dirichlet skew over age bins, by a metadata column (scanner, manufacturer, ...) and by a file that
assigns subjects to clients (and optionally to the test set). Everything is deterministic from the seed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.registry import registry
from fedsim.scenario import DataConfig, PartitionConfig

PARTITIONERS = registry("partitioner")
TEST = "test"  # the client name that means: the server's held-out test set


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


def cohort_metadata(cohort: Any) -> dict[str, Any]:
    """Subject ids and metadata columns of a cohort, as keyword arguments of split_federation.

    Cohorts read from disk carry both; a synthetic cohort has only its site names as a column."""
    columns = getattr(cohort, "columns", None) or {"site": [cohort.site_names[int(i)] for i in cohort.site]}
    return {"subjects": getattr(cohort, "subjects", None), "columns": columns}


def split_federation(
    *,
    site: np.ndarray,
    age: np.ndarray,
    config: DataConfig,
    n_clients: int,
    seed: int,
    subjects: Sequence[str] | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> FederationSplit:
    """Hold out a stratified test set, partition the rest, then split each client's validation set.

    `subjects` (ids) and `columns` (metadata per row) come with cohorts read from disk; they are
    needed by ``by: column``, ``by: file`` and ``test_column``."""
    rng = np.random.default_rng([seed, 1])
    p = config.partition
    groups, eligible, forced_test = _groups(p, site, n_clients, subjects, columns)
    if p.test_column is not None:
        forced_test = np.char.lower(_column(columns, p.test_column, len(site))) == TEST
        if not forced_test.any():
            raise ValueError(f"data.partition.test_column: no subject has '{TEST}' in column '{p.test_column}'")
    if forced_test is not None and forced_test.any():
        test = np.flatnonzero(forced_test & eligible).tolist()
        pool = np.flatnonzero(~forced_test & eligible).tolist()
    else:
        test, pool = [], []
        for s in np.unique(groups[eligible]):
            members = rng.permutation(np.flatnonzero((groups == s) & eligible))
            n_test = max(1, round(len(members) * config.test_fraction))
            test += members[:n_test].tolist()
            pool += members[n_test:].tolist()
    pool_arr = np.array(sorted(pool), dtype=int)
    partitioner = PARTITIONERS.get(p.by)
    parts = partitioner(pool_arr, site=site, age=age, n_clients=n_clients, config=p, rng=rng, groups=groups)
    clients = []
    for i, part in enumerate(parts):
        if len(part) < p.min_size + (1 if config.val_fraction > 0 else 0):
            raise ValueError(
                f"data.partition: client {i} got only {len(part)} subjects; "
                "use more data.n_subjects, fewer federation.clients or a larger alpha"
            )
        part = rng.permutation(np.asarray(part, dtype=int))
        n_val = round(len(part) * config.val_fraction) if config.val_fraction > 0 else 0
        n_val = max(1, n_val) if config.val_fraction > 0 else 0
        clients.append(ClientSplit(train=sorted(part[n_val:].tolist()), val=sorted(part[:n_val].tolist())))
    return FederationSplit(test=sorted(test), clients=clients)


def _groups(p: PartitionConfig, site: np.ndarray, n_clients: int, subjects: Sequence[str] | None,
            columns: Mapping[str, Sequence[str]] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per row: the stratum / client group, whether it takes part, and (by file) whether it is test."""
    n = len(site)
    if p.by == "column":
        values = _column(columns, p.column, n)
        names = sorted(set(values.tolist()))
        if len(names) != n_clients:
            raise ValueError(f"federation.clients: is {n_clients}, but data.partition.column '{p.column}' has "
                             f"{len(names)} values ({_listing(names)}); one client per value")
        return np.searchsorted(names, values), np.ones(n, bool), None
    if p.by == "file":
        ids = [str(s) for s in subjects] if subjects is not None else [str(i) for i in range(n)]
        assignment = read_assignment(p.file)
        clients = client_names(assignment)
        if len(clients) != n_clients:
            raise ValueError(f"federation.clients: is {n_clients}, but data.partition.file lists "
                             f"{len(clients)} clients ({_listing(clients)})")
        listed = [assignment.get(s) for s in ids]
        if all(c is None for c in listed):
            raise ValueError(f"data.partition.file: none of its subjects is in the dataset "
                             f"(dataset ids look like {', '.join(ids[:3])})")
        index = {c: i for i, c in enumerate(clients)}
        groups = np.array([index.get(c, -1) for c in listed])
        return groups, np.array([c is not None for c in listed]), np.array([c == TEST for c in listed])
    return np.asarray(site), np.ones(n, bool), None


def _column(columns: Mapping[str, Sequence[str]] | None, name: str | None, n: int) -> np.ndarray:
    if not columns or name not in columns:
        known = ", ".join(sorted(columns or {})) or "none: this dataset has no metadata columns"
        raise ValueError(f"data.partition: no metadata column '{name}' (available: {known})")
    values = np.array([str(v) for v in columns[name]])
    if len(values) != n:
        raise ValueError(f"data.partition: column '{name}' has {len(values)} rows for {n} subjects")
    return values


def _listing(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def read_assignment(path: Path | None) -> dict[str, str]:
    """subject -> client name (or 'test') from a CSV (subject, client[, split]) or a JSON file.

    JSON is either {subject: client} or {client: [subjects]}; a client named 'test', or a CSV
    `split` of 'test', puts the subject in the server's test set."""
    if path is None:
        raise ValueError("data.partition.file: required when by is 'file'")
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"data.partition.file: cannot read {path} ({exc})") from None
    out: dict[str, str] = {}
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"data.partition.file: {path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not data:
            raise ValueError(f"data.partition.file: {path} must be an object of subject -> client "
                             "or client -> [subjects]")
        for key, value in data.items():
            if isinstance(value, list):
                out.update({str(s): str(key) for s in value})
            else:
                out[str(key)] = str(value)
    else:
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if str(path).endswith(".tsv") else ","))
        header = set(rows[0]) if rows else set()
        if not {"subject", "client"} <= header:
            raise ValueError(f"data.partition.file: {path} needs the columns subject and client "
                             f"(found: {', '.join(sorted(h for h in header if h)) or 'no rows'})")
        for row in rows:
            split = (row.get("split") or "").strip().lower()
            out[row["subject"].strip()] = TEST if split == TEST else row["client"].strip()
    return {s: (TEST if c.lower() == TEST else c) for s, c in out.items() if s}


def client_names(assignment: Mapping[str, str]) -> list[str]:
    """The clients a file names, in client-id order (numbers numerically, then names)."""
    names = {c for c in assignment.values() if c != TEST}
    return sorted(names, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))


@PARTITIONERS.register("site")
def by_site(pool: np.ndarray, *, site: np.ndarray, n_clients: int, **_: object) -> list[np.ndarray]:
    """One client per site: the natural split, non-IID in contrast, noise and age range."""
    sites = np.unique(site)
    if len(sites) != n_clients:
        raise ValueError(f"federation.clients: must equal the number of sites ({len(sites)}), got {n_clients}")
    return [pool[site[pool] == s] for s in sites]


@PARTITIONERS.register("column")
@PARTITIONERS.register("file")
def by_group(pool: np.ndarray, *, groups: np.ndarray, n_clients: int, **_: object) -> list[np.ndarray]:
    """One client per value of a metadata column, or per client named in a partition file."""
    return [pool[groups[pool] == g] for g in range(n_clients)]


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
