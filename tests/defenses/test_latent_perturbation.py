"""The learnable latent perturbation: bounded, trained by minimax inside local training, private to the client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.defenses.base import ClientRound
from fedsim.defenses.latent_modules import Deperturber, LatentDefense, Perturbation, autoencoder, minimax_step
from fedsim.defenses.latent_perturbation import LatentPerturbation
from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import FederationConfig, ScenarioError, TaskConfig
from fedsim.tasks.brain_age import BrainAgeSliceTask
from fedsim.training import one_batch_gradient
from tests.conftest import tiny_scenario


def _defense(epsilon: float = 0.3) -> LatentDefense:
    torch.manual_seed(0)
    return LatentDefense(coder=autoencoder(2, (4, 8)), perturb=Perturbation(2, 8, epsilon), attacker=Deperturber(2),
                         lr=1e-2)


def test_the_perturbation_stays_inside_its_budget():
    z = torch.randn(5, 8, 4, 4)
    moved = Perturbation(2, 8, 0.3)(z) - z
    assert (moved.flatten(1).norm(dim=1) <= 0.3 * z.flatten(1).norm(dim=1) + 1e-5).all()


def test_minimax_trains_its_own_modules_and_never_touches_the_models_gradient():
    defense, task = _defense(), BrainAgeSliceTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=50.0,
                                                  target_std=10.0)
    model, x, y = task.build_model(), torch.randn(4, 1, 16, 16), torch.tensor([40.0, 50.0, 60.0, 70.0])
    task.loss(model(x), y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    perturb = [p.detach().clone() for p in defense.perturb.parameters()]
    attacker = [p.detach().clone() for p in defense.attacker.parameters()]
    scores = minimax_step(defense, model, task.loss, x, y, privacy_weight=1.0)
    assert set(scores) == {"surrogate_mse", "distortion_mse", "perturbed_task_loss", "output_drift"}
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before[n]), n  # a FedSGD gradient in the making stays what it was
    assert any(not torch.equal(a, b) for a, b in zip(perturb, defense.perturb.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(attacker, defense.attacker.parameters(), strict=True))
    assert all(p.grad is None for p in defense.coder.parameters())  # the pre-trained autoencoder stays fixed


def test_the_private_state_round_trips_with_the_optimizers_moments():
    defense, task = _defense(), BrainAgeSliceTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=50.0,
                                                  target_std=10.0)
    minimax_step(defense, task.build_model(), task.loss, torch.randn(2, 1, 16, 16), torch.tensor([40.0, 60.0]),
                 privacy_weight=1.0)
    state = defense.state()
    assert any(k.startswith("perturb_opt.") and k.endswith("exp_avg_sq") for k in state)
    other = _defense()
    for p in other.perturb.parameters():
        p.data.add_(1.0)
    other.load(state)
    assert state.keys() == other.state().keys()
    assert all(torch.equal(v, other.state()[k]) for k, v in state.items())


def test_a_fedsgd_gradient_is_taken_on_the_perturbed_images():
    task = BrainAgeSliceTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=50.0, target_std=10.0)
    x, y = torch.randn(6, 1, 16, 16), torch.linspace(30, 80, 6)
    grads = {}
    for listed in (False, True):
        torch.manual_seed(1)
        model = task.build_model()
        ctx = ClientRound(client=0, server_round=1, task=task, config=FederationConfig(batch_size=2),
                          rng=np.random.default_rng(0))
        hooks = [LatentPerturbation(channels=(4,), pretrain_epochs=1).training_hook(ctx)] if listed else []
        grads[listed], _ = one_batch_gradient(model, x, y, task=task, batch_size=1, rng=np.random.default_rng(2),
                                              hooks=hooks)
        if listed:
            assert {k.split(".")[0] for k in ctx.tensors} == {"coder", "perturb", "attacker", "perturb_opt",
                                                              "attacker_opt"}
    assert not torch.equal(grads[False]["head.weight"], grads[True]["head.weight"])


@pytest.mark.parametrize(("change", "match"), [
    ({"params": {"epsilon": 0}}, r"defenses\.0: .*params\.epsilon: Input should be greater than 0"),
    ({"params": {"channels": [4, 8, 16, 32]}}, r"params\.channels: 4 levels shrink data\.shape 16 by 16"),
    ({"task": "segmentation"}, r"task 'segmentation': latent_perturbation perturbs whole-image tasks"),
])
def test_bad_input_is_a_one_line_error(change, match):
    raw = tiny_scenario(defenses=[{"name": "latent_perturbation", "params": change.get("params", {})}])
    if "task" in change:
        raw["task"] = {"name": change["task"], "model": {"name": "unet", "channels": [4, 8]}}
    with pytest.raises(ScenarioError, match=match):
        validate_scenario(raw)


@pytest.mark.e2e
def test_each_client_keeps_its_modules_across_rounds_and_sends_only_the_model(tmp_path: Path):
    raw = tiny_scenario(defenses=[{"name": "latent_perturbation",
                                   "params": {"channels": [4], "pretrain_epochs": 2, "warmup_steps": 3}}],
                        server={"targets": {"clients": [0], "rounds": [2]}, "capture": True},
                        attacks=[{"name": "inverting_gradients", "params": {"iterations": 5}},
                                 {"name": "adaptive_learned_inversion",
                                  "params": {"aux_subjects": 20, "copy_epochs": 1}}],
                        reconstruction={"probes": ["sex"], "probe_scans": 30, "probe_epochs": 1})
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and not result.failures
    train = [r for r in RunFolder(result.run_dir).metrics() if r.get("kind") == "train" and r["client"] == 0]
    by_round = {r["round"]: r for r in train}
    assert by_round[1]["autoencoder_mse"] == by_round[2]["autoencoder_mse"]  # pre-trained once, then kept
    assert by_round[2]["distortion_mse"] > 0 and by_round[2]["surrogate_mse"] > 0
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    row, adaptive = summary["attacks"]
    assert row["status"] == "ok" and 0 <= row["probe_sex"] <= 1 and 0.5 <= row["probe_sex_majority"] <= 1
    # its own latent perturbation, trained on its own scans, is what its map was fitted through
    assert adaptive["status"] == "ok" and adaptive["copied"] == "latent_perturbation" and adaptive["not_copied"] == "-"
    assert "Attribute probes" in (result.run_dir / "report.md").read_text()


def test_a_diagnosis_probe_needs_the_label():
    raw = tiny_scenario(reconstruction={"probes": ["diagnosis"]}, attacks=[{"name": "inverting_gradients"}])
    with pytest.raises(ScenarioError, match=r"reconstruction\.probes: 'diagnosis' needs a diagnosis label"):
        validate_scenario(raw)

