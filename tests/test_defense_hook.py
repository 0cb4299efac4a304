"""A defense listed in the scenario really changes what leaves every client (through Flower + Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedsim.loading import validate_scenario
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


@pytest.mark.e2e
def test_listed_defenses_transform_every_outgoing_update_in_order(tmp_path: Path):
    plugin = tmp_path / "scale.py"
    plugin.write_text(SCALE)
    raw = tiny_scenario(defenses=[{"name": f"{plugin}:Scale", "params": {"factor": 2.0}},
                                  {"name": f"{plugin}:Scale", "params": {"factor": 0.0}}],
                        server={"targets": {"clients": [0], "rounds": [1]}, "capture": True},
                        federation={"rounds": 1})
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and not result.failures
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
