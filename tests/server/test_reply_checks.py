"""The server refuses client replies it cannot aggregate (before any attacker or the strategy sees them)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedsim.server.observation import invalid_update

SENT = {"w": (2, 3), "b": (2,), "norm.running_mean": (2,)}


def reply(gradient: bool = False, **arrays: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(content=RecordDict({"arrays": ArrayRecord(arrays),
                                               "metrics": MetricRecord({"gradient_update": int(gradient)})}))


def test_a_well_formed_update_passes_and_a_gradient_may_leave_out_buffers():
    good = {"w": torch.zeros(2, 3), "b": torch.ones(2), "norm.running_mean": torch.zeros(2)}
    assert invalid_update(reply(**good), SENT) is None
    assert invalid_update(reply(gradient=True, w=torch.zeros(2, 3), b=torch.ones(2)), SENT) is None


def test_garbage_is_named():
    full = {"w": torch.zeros(2, 3), "b": torch.ones(2), "norm.running_mean": torch.zeros(2)}
    cases = {
        "holds NaN": {**full, "b": torch.tensor([1.0, float("nan")])},
        "holds NaN or infinite": {**full, "w": torch.full((2, 3), float("inf"))},
        "has shape (7,), (2, 3) was sent": {**full, "w": torch.zeros(7)},
        "array extra was not sent": {**full, "extra": torch.zeros(1)},
        "array norm.running_mean is missing": {"w": torch.zeros(2, 3), "b": torch.ones(2)},
    }
    for expected, arrays in cases.items():
        problem = invalid_update(reply(**arrays), SENT)
        assert problem is not None and expected in problem, (expected, problem)
    assert "no arrays" in invalid_update(SimpleNamespace(content=RecordDict({})), SENT)
