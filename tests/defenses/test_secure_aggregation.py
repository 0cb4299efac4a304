"""Secure aggregation: the server (and every attacker) sees each targeted round's aggregate, never one
client's update."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import tiny_scenario


@pytest.mark.e2e
def test_per_client_attacks_are_skipped_and_only_the_aggregate_is_recorded(tmp_path):
    raw = tiny_scenario(defenses=[{"name": "secure_aggregation"}], federation={"rounds": 1},
                        server={"targets": {"clients": [0], "rounds": [1]}},
                        attacks=[{"name": "dlg", "params": {"iterations": 2}}])
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    run = result.run_dir
    assert result.error is None and not result.failures
    (row,) = result.summary["attacks"]
    assert row["status"] == "skipped" and "secure aggregation" in row["reason"]
    assert not list((run / "observations").glob("round*_client*")) and not (run / "private").exists()
    seen = load_file(run / "observations/round001_aggregate/update.safetensors")
    final = load_file(run / "model.safetensors")
    # 1 round: the aggregate is the model
    assert seen.keys() == final.keys() and all((seen[k] == final[k]).all() for k in seen)
    assert json.loads((run / "observations/round001_aggregate/update.json").read_text())["kind"] == "aggregate"
    assert "secure aggregation" in (run / "report.md").read_text()


def test_secure_aggregation_needs_two_clients_per_round():
    raw = tiny_scenario(defenses=[{"name": "secure_aggregation"}], federation={"fraction_train": 0.5})
    with pytest.raises(ScenarioError, match="defenses.0: secure_aggregation: needs at least 2 clients per round"):
        validate_scenario(raw)
    with pytest.raises(ScenarioError, match="listed only once"):
        validate_scenario(tiny_scenario(defenses=[{"name": "secure_aggregation"}] * 2))
