"""Shared fixtures: a private cohort cache per test session, and tiny scenarios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep generated cohorts out of the user's ~/.cache during tests (Ray workers inherit this)."""
    if "FEDSIM_TEST_CACHE" in os.environ:
        os.environ["FEDSIM_CACHE"] = os.environ["FEDSIM_TEST_CACHE"]
    else:
        os.environ["FEDSIM_CACHE"] = str(tmp_path_factory.mktemp("fedsim-cache"))


def tiny_scenario(**sections: object) -> dict:
    """A raw scenario mapping for a 2 client x 2 round federation at 16^3."""
    raw = {
        "name": "tiny",
        "seed": 3,
        "data": {"n_subjects": 24, "shape": 16, "sites": 2, "partition": {"by": "site", "min_size": 2}},
        "task": {"model": {"channels": [4, 8]}},
        "federation": {"clients": 2, "rounds": 2, "local_steps": 2, "batch_size": 4},
        "resources": {"num_cpus": 1},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw
