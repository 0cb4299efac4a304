"""Soteria: the head gradient of the representation features that leak the input most is zeroed before each step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.defenses.base import ClientRound
from fedsim.defenses.soteria import Soteria
from fedsim.loading import validate_scenario
from fedsim.scenario import FederationConfig, ScenarioError, TaskConfig
from fedsim.tasks.brain_age import BrainAgeSliceTask
from fedsim.training import one_batch_gradient
from tests.conftest import tiny_scenario


def test_soteria_zeroes_the_head_gradient_of_the_least_robust_features_only():
    task = BrainAgeSliceTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=50.0, target_std=10.0)
    x, y = torch.randn(6, 1, 16, 16), torch.linspace(30, 80, 6)
    grads = {}
    for listed in (False, True):
        torch.manual_seed(1)
        model = task.build_model()
        ctx = ClientRound(client=0, server_round=1, task=task, config=FederationConfig(batch_size=2),
                          rng=np.random.default_rng(0))
        defense = Soteria(prune=0.5)
        grads[listed], _ = one_batch_gradient(model, x, y, task=task, batch_size=4, rng=np.random.default_rng(2),
                                              hooks=[defense.training_hook(ctx)] if listed else [])
    head, plain = grads[True]["head.weight"].flatten(), grads[False]["head.weight"].flatten()
    assert int((head == 0).sum()) == 4 and torch.equal(head[head != 0], plain[head != 0])  # 4 of 8 features
    assert all(torch.equal(grads[True][k], grads[False][k]) for k in grads[True] if k != "head.weight")
    assert defense.round_metrics(ctx=ctx) == {"soteria_pruned": 0.5}
    with pytest.raises(ScenarioError, match="soteria needs a network whose head reads a pooled representation"):
        validate_scenario(tiny_scenario(task={"model": {"name": "lenet", "channels": [4, 8], "norm": "none"}},
                                        defenses=[{"name": "soteria"}]))
