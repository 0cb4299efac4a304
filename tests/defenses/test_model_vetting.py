"""Model vetting: the enrolment hash catches the imprint block and passes the honest model; weight norms
outside the band are refused; bad input; and a real federation where the targeted client refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.defenses.base import ClientRound
from fedsim.defenses.model_vetting import (
    ModelVetting,
    TamperedModelError,
    architecture_hash,
)
from fedsim.loading import validate_scenario
from fedsim.models.imprint import ImprintedModel
from fedsim.runner import run_scenario
from fedsim.scenario import FederationConfig, ScenarioError, TaskConfig
from fedsim.tasks import TASKS
from tests.conftest import tiny_scenario


def _ctx(server_round: int = 1, state: dict | None = None) -> ClientRound:
    task = TASKS.get("brain_age")(config=TaskConfig(model={"channels": [4, 8]}), target_mean=50.0, target_std=10.0)
    return ClientRound(client=0, server_round=server_round, task=task, config=FederationConfig(),
                       rng=np.random.default_rng(0), state=state if state is not None else {})


def test_the_hash_detects_the_imprint_block_and_passes_the_honest_model():
    ctx = _ctx()
    torch.manual_seed(123)  # the server's init differs from the client's enrolment copy: only values differ
    honest = ctx.task.build_model()
    rng_before = torch.random.get_rng_state()
    ModelVetting().inspect_model(honest, config={}, ctx=ctx)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # vetting leaves training's randomness alone
    assert any(k.startswith("norm.") for k in ctx.state)  # remembered for next round's band

    tampered = ImprintedModel(ctx.task.build_model(), input_shape=(1, 16, 16, 16), bins=8)
    assert architecture_hash(tampered) != architecture_hash(honest)
    with pytest.raises(TamperedModelError, match="nested under 'body.'.*imprint.measure.weight 8x4096"):
        ModelVetting().inspect_model(tampered, config={}, ctx=_ctx())


def test_weights_outside_the_band_of_last_round_are_refused():
    ctx = _ctx()
    model = ctx.task.build_model()
    ModelVetting().inspect_model(model, config={}, ctx=ctx)
    nxt = _ctx(server_round=2, state=dict(ctx.state))
    with torch.no_grad():
        model.features[0].conv.weight.mul_(1.05)  # an honest round's drift passes
    ModelVetting().inspect_model(model, config={}, ctx=nxt)
    with torch.no_grad():
        model.features[0].conv.weight.mul_(10.0)  # a planted, scaled layer does not
    with pytest.raises(TamperedModelError, match="features.0.conv.weight"):
        ModelVetting().inspect_model(model, config={}, ctx=_ctx(server_round=3, state=dict(nxt.state)))
    ModelVetting(check_norms=False).inspect_model(model, config={}, ctx=_ctx(server_round=3, state=dict(nxt.state)))


@pytest.mark.parametrize("params", [{"enrolment": "none"}, {"enrolment": None}])
def test_vetting_without_an_enrolled_architecture_is_a_scenario_error(params: dict):
    raw = tiny_scenario(defenses=[{"name": "model_vetting", "params": params}])
    with pytest.raises(ScenarioError, match="defenses.0: model_vetting: params.enrolment: no architecture"):
        validate_scenario(raw)


@pytest.mark.e2e
def test_the_targeted_client_refuses_the_imprinted_model_and_the_attack_gets_nothing(tmp_path):
    raw = tiny_scenario(server={"behaviours": [{"name": "imprint", "params": {"bins": 4}}],
                                "targets": {"clients": [0], "rounds": [1]}},
                        attacks=[{"name": "imprint"}], defenses=[{"name": "model_vetting"}])
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and result.summary["rounds_completed"] == 2
    (failure,) = result.failures  # client 0 in round 1 only; it trains again in round 2 (honest model)
    assert (failure["round"], failure["client"]) == (1, 0)
    assert failure["error"].startswith("TamperedModelError: model_vetting: refused")
    (row,) = result.summary["attacks"]
    assert row["status"] == "skipped"
    assert not list((result.run_dir / "observations").glob("round*_client*"))
    assert "round 1, client 0 (train): TamperedModelError" in (result.run_dir / "report.md").read_text()
