"""A defense listed in the scenario really changes what leaves every client, and a learned defense
trains private modules inside local training that never leave it (through Flower + Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import tiny_scenario

SCALE = '''
from fedsim.defenses import Defense
from pydantic import BaseModel, ConfigDict

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float

class Scale(Defense):
    """Multiplies every outgoing tensor (a stand-in for noise / clipping with an exact, checkable effect)."""
    Params = Params

    def transform_update(self, update, *, kind, reference, ctx):
        return {k: v * self.params.factor for k, v in update.items()}
'''

LEARNED = '''
import torch
from fedsim.defenses import Defense


class Learned(Defense):
    """A stand-in for a learned defense: a private module trained after every local step, a loss
    term on every batch, and both kept across rounds in the client's private state."""

    def loss_term(self, batch, prediction, model, *, ctx):
        ctx.state["terms"] = ctx.state.get("terms", 0.0) + 1
        return 0.0 * prediction.sum()  # counted, but leaves the optimisation unchanged

    def after_step(self, step, model, batch, *, ctx):
        mine = torch.nn.Linear(batch.x[0].numel(), 1)
        if "w" in ctx.tensors:
            mine.weight.data.copy_(ctx.tensors["w"])
        opt = torch.optim.SGD(mine.parameters(), lr=0.1)
        opt.zero_grad()
        ((mine(batch.x.flatten(1)).squeeze(1) - batch.y) ** 2).mean().backward()  # its own objective
        opt.step()
        ctx.tensors["w"] = mine.weight.detach().clone()
        ctx.state["steps"] = ctx.state.get("steps", 0.0) + 1

    def round_metrics(self, *, ctx):
        return {"private_steps": ctx.state["steps"], "private_terms": ctx.state["terms"],
                "private_norm": float(ctx.tensors["w"].norm())}
'''


@pytest.mark.e2e
def test_listed_defenses_transform_every_outgoing_update_in_order(tmp_path: Path):
    plugin = tmp_path / "scale.py"
    plugin.write_text(SCALE)
    learned = tmp_path / "learned.py"
    learned.write_text(LEARNED)
    raw = tiny_scenario(defenses=[{"name": f"{learned}:Learned"},
                                  {"name": f"{plugin}:Scale", "params": {"factor": 2.0}},
                                  {"name": f"{plugin}:Scale", "params": {"factor": 0.0}}],
                        server={"targets": {"clients": [0], "rounds": [1, 2]}, "capture": True})
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and not result.failures

    # the learned defense ran inside local training (2 local steps a round), kept its module and
    # counters across rounds, and none of it left the client: the update has the model's keys only
    train = sorted((r["round"], r["private_steps"], r["private_terms"], r["private_norm"])
                   for r in RunFolder(result.run_dir).metrics() if r.get("kind") == "train" and r["client"] == 0)
    assert [(r, s, t) for r, s, t, _ in train] == [(1, 2.0, 2.0), (2, 4.0, 4.0)]
    assert train[0][3] != train[1][3]  # the private module went on training from where round 1 left it
    sent = load_file(result.run_dir / "observations/round002_client000/update.safetensors")
    assert set(sent) == set(load_file(result.run_dir / "model.safetensors"))
    final = load_file(result.run_dir / "model.safetensors")
    assert all(float(t.abs().max()) == 0.0 for t in final.values())  # FedAvg of zeroed updates
    seen = load_file(result.run_dir / "observations/round001_client000/update.safetensors")
    assert all(float(t.abs().max()) == 0.0 for t in seen.values())  # the server only saw the defended update
    meta = json.loads((result.run_dir / "observations/round001_client000/update.json").read_text())
    assert meta["kind"] == "weights"


def test_defense_params_are_checked_before_training(tmp_path: Path):
    plugin = tmp_path / "scale.py"
    plugin.write_text(SCALE)
    with pytest.raises(ScenarioError, match="defenses.0: params.factor"):
        validate_scenario(tiny_scenario(defenses=[{"name": f"{plugin}:Scale", "params": {}}]))
