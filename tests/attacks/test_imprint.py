"""The imprint (Robbing the Fed) attack: the bin-difference formula, exact recovery in 3D and 2D, FedSGD
and FedAvg, the tampering behaviour and its restore, bad input, and one real federation."""

from __future__ import annotations

import copy

import pytest
import torch
from flwr.app import ConfigRecord
from safetensors.torch import load_file

from fedsim.attacks.base import Observation
from fedsim.attacks.imprint import ImprintAttack, bin_differences, recover_from_imprint
from fedsim.attacks.metrics import psnr
from fedsim.loading import validate_scenario
from fedsim.models.brain_age import BrainAgeCNN
from fedsim.models.imprint import (
    ImprintedModel,
    is_tampered,
    make_imprint,
    strip,
    tamper,
)
from fedsim.models.lenet import LeNet
from fedsim.protocol import ARCH_KEY, BATCH_KEY
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from fedsim.server.behaviours import BEHAVIOURS
from tests.conftest import tiny_scenario


def _brains(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Look-alike 'scans': one shared anatomy plus a small subject-specific deviation."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, *shape, generator=torch.Generator().manual_seed(99))
    return base + 0.3 * torch.randn(n, *shape, generator=gen)


def _imprinted(body: torch.nn.Module, aux: torch.Tensor, bins: int) -> ImprintedModel:
    arrays = make_imprint(aux, bins=bins, strength=1e-4, generator=torch.Generator().manual_seed(1))
    model = ImprintedModel(body, input_shape=aux.shape[1:], bins=bins)
    model.load_state_dict(tamper(body.state_dict(), arrays))
    return model


def _alone(model: ImprintedModel, x: torch.Tensor) -> list[int]:
    """Samples whose measurement falls alone between two adjacent thresholds (ground truth)."""
    cuts = -model.imprint.measure.bias.detach()
    slot = torch.bucketize(x.flatten(1).double() @ model.imprint.measure.weight[0].detach(), cuts.sort().values)
    return [i for i in range(len(x)) if (slot == slot[i]).sum() == 1]


def _best_psnr(found: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """For each true sample, the PSNR of its closest recovered image."""
    found = found.float().reshape(-1, *x.shape[1:])
    return torch.stack([psnr(found, x[i:i + 1].expand_as(found)).max() for i in range(len(x))])


def test_bin_difference_formula_isolates_each_interval():
    g = torch.tensor([0.5, -2.0, 1.5])  # per-sample gradients dL/dh
    x = torch.randn(3, 6, dtype=torch.float64)
    cuts = torch.tensor([3.0, -10.0, 1.0, 2.0])  # unsorted on purpose; samples sit at 1.5, 2.5 and 9
    value = torch.tensor([1.5, 2.5, 9.0])
    active = (value[:, None] > cuts[None]).double()  # (samples, units): unit i on above cut i
    weight_grad = (active * g[:, None].double()).T @ x
    bias_grad = (active * g[:, None].double()).sum(0)
    dw, db = bin_differences(weight_grad, bias_grad, cuts)
    # sorted cuts -10, 1, 2, 3: intervals [-10,1) empty, [1,2) sample 0, [2,3) sample 1, [3,inf) sample 2
    assert torch.allclose(db, torch.tensor([0.0, 0.5, -2.0, 1.5], dtype=torch.float64))
    assert torch.allclose(dw[1:], g[:, None].double() * x)
    images, mass = recover_from_imprint(weight_grad, bias_grad, cuts)
    assert len(images) == 3 and torch.allclose(mass, torch.tensor([2.0, 1.5, 0.5], dtype=torch.float64))
    assert torch.allclose(images[0], x[1]) and torch.allclose(images[2], x[0])


@pytest.mark.parametrize("dims", [3, 2])
def test_a_sample_alone_in_its_bin_is_recovered_exactly_from_a_gradient(dims: int):
    shape = (1, 16, 16, 16) if dims == 3 else (1, 32, 32)
    torch.manual_seed(0)
    body = BrainAgeCNN(channels=[4, 8], spatial_dims=3, out_bias=50, out_scale=10) if dims == 3 \
        else LeNet(spatial_dims=2, out_bias=50, out_scale=10)
    aux, x = _brains(60, shape, seed=1), _brains(8, shape, seed=2)
    model = _imprinted(body, aux, bins=32)
    torch.nn.functional.mse_loss(model(x), torch.rand(8) * 40 + 30).backward()
    found, _ = recover_from_imprint(model.imprint.measure.weight.grad, model.imprint.measure.bias.grad,
                                    -model.imprint.measure.bias.detach())
    alone = _alone(model, x)
    assert len(alone) >= 4  # 8 samples in 32 equal-mass bins: most are alone
    assert (_best_psnr(found, x)[alone] > 60).all()
    assert (model.imprint(x) - x).abs().mean() < 0.05  # the network behind still sees the scan


def test_fedavg_update_after_several_sgd_steps_still_gives_exact_scans():
    torch.manual_seed(0)
    shape = (1, 16, 16, 16)
    aux, x = _brains(60, shape, seed=1), _brains(4, shape, seed=3)
    model = _imprinted(BrainAgeCNN(channels=[4, 8], out_bias=50, out_scale=10), aux, bins=32)
    sent = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    y = torch.rand(4) * 40 + 30
    for _ in range(4):  # four local steps on the same batch
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    obs = Observation(round=1, client=0, kind="weights", update=model.state_dict(), global_state=sent,
                      num_examples=4, batch_size=4, local_steps=4, auxiliary=aux)
    recon = ImprintAttack().reconstruct(obs)
    assert recon.images.shape == x.shape and recon.extra["bins"] == 32
    alone = _alone(model, x)
    assert alone and (_best_psnr(recon.images, x)[alone] > 60).all()


def test_the_behaviour_sends_a_tampered_model_and_restores_the_agreed_update():
    raw = tiny_scenario(server={"behaviours": [{"name": "imprint", "params": {"bins": 4}}]})
    scenario = validate_scenario(raw)
    behaviour = BEHAVIOURS.get("imprint")(bins=4)
    behaviour.prepare(scenario=scenario, auxiliary=_brains(10, (1, 16, 16, 16), seed=0))
    agreed = {"w": torch.ones(3), "b": torch.zeros(1)}
    config = ConfigRecord({BATCH_KEY: 8})
    sent = behaviour.modify_arrays(agreed, config, server_round=1, client=0)
    assert is_tampered(sent) and sent["imprint.measure.weight"].shape == (32, 16**3)  # 4 x batch 8
    assert '"bins": 32' in str(config[ARCH_KEY]) and torch.equal(sent["body.w"], agreed["w"])
    assert behaviour.restore_update(sent).keys() == agreed.keys() == strip(sent).keys()
    absolute = BEHAVIOURS.get("imprint")(bins=5, unit="absolute")
    assert absolute.n_bins(64) == 5


@pytest.mark.parametrize("params, message", [
    ({"bins": 0.5}, "server.behaviours.0: params.bins"),
    ({"bins": 2.5, "unit": "absolute"}, "server.behaviours.0: params.bins: must be a whole number"),
    ({"strength": 0}, "server.behaviours.0: params.strength"),
])
def test_bad_imprint_params_fail_before_training(params: dict, message: str):
    with pytest.raises(ScenarioError, match=message):
        validate_scenario(tiny_scenario(server={"behaviours": [{"name": "imprint", "params": params}]}))


@pytest.mark.e2e
def test_imprint_through_flower_recovers_scans_and_the_federation_completes(tmp_path):
    raw = tiny_scenario(server={"behaviours": [{"name": "request_gradient"},
                                               {"name": "imprint", "params": {"bins": 4}}],
                                "targets": {"clients": [0], "rounds": [1]}},
                        attacks=[{"name": "imprint"}])
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and not result.failures and result.summary["rounds_completed"] == 2
    (row,) = result.summary["attacks"]
    assert row["status"] == "ok" and row["recovered_30db"] >= 0.5 and row["reid_top1"] >= 0.5
    folder = result.run_dir / "observations/round001_client000"
    assert is_tampered(load_file(folder / "global.safetensors"))  # the attacker sees what it sent ...
    assert is_tampered(load_file(folder / "update.safetensors"))  # ... and the client's whole reply
    final = load_file(result.run_dir / "model.safetensors")
    assert not is_tampered(final) and "features.0.conv.weight" in final  # aggregated in the agreed shape


def test_a_pca_prior_with_fewer_auxiliary_scans_than_components_fails_before_training(tmp_path):
    """(Population-prior inversion, the honest-but-curious counterpart: its one bad-input check.)"""
    raw = tiny_scenario(attacks=[{"name": "inverting_gradients",
                                  "params": {"parameterization": "pca", "n_components": 20}}])
    with pytest.raises(ScenarioError, match=r"attacks.0: inverting_gradients: params.n_components: a 20-component "
                                            r"PCA prior needs at least 21 auxiliary scans, but the server holds 4"):
        run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert not list(tmp_path.iterdir())  # nothing was trained or written
