"""dp_sgd: per-sample clipping, noise scale, accounting across rounds, clean updates, scenario checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opacus import PrivacyEngine
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsim.defenses import DEFENSES, dp_sgd
from fedsim.defenses.base import ClientRound
from fedsim.defenses.dp_sgd import DPSGD, _allow_empty_batches, epsilon
from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import FederationConfig, ScenarioError, TaskConfig
from fedsim.tasks import TASKS
from fedsim.training import (
    PermutationBatches,
    make_optimizer,
    one_batch_gradient,
    run_steps,
    train_local,
)
from tests.conftest import tiny_scenario

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing",  # Opacus hooks on the input layer
                                        "ignore:Secure RNG turned off")  # the reference PrivacyEngine below

TASK = TASKS.get("brain_age")(config=TaskConfig(model={"channels": [2, 4]}), target_mean=0.0, target_std=1.0)
MODES = ["hooks", "functorch", "ew"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, 8, generator=g), 3 * torch.randn(n, generator=g)


def fresh_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TASK.build_model()


def ctx_for(config: FederationConfig, state: dict[str, float], server_round: int = 1) -> ClientRound:
    return ClientRound(client=0, server_round=server_round, task=TASK, config=config,
                       rng=np.random.default_rng(server_round), state=state)


def wrapped(params: dict, n: int = 8, batch: int = 4):
    """A fresh model, optimizer and loader through the defense (as run_steps would get them)."""
    x, y = data(n)
    model = fresh_model()
    config = FederationConfig(batch_size=batch, lr=0.1, optimizer="sgd", momentum=0.0, local_steps=1)
    loader = DataLoader(TensorDataset(x, y, torch.arange(n)),
                        batch_sampler=PermutationBatches(n, batch, np.random.default_rng(0)))
    defense = DPSGD(**params)
    return (x, y, model, *defense.wrap_training(model, make_optimizer(model, config), loader,
                                                ctx=ctx_for(config, {})))


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# --- clipping and noise -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=2, deadline=None)
@given(clip=st.floats(1e-3, 1e2))
@example(clip=1e-3)  # every sample clipped
def test_every_per_sample_gradient_is_clipped_to_max_grad_norm(clip: float, mode: str):
    x, y, model, dp_model, opt, _ = wrapped({"noise_multiplier": 1.0, "max_grad_norm": clip, "grad_sample_mode": mode})
    clipped, raw = [], []
    for i in range(4):  # one sample per batch: Opacus's clipped sum is that sample's clipped gradient
        opt.zero_grad()
        TASK.loss(dp_model(x[i:i + 1]), y[i:i + 1]).backward()
        raw.append(flat(p.grad_sample[0] for p in opt.params).norm())
        opt.clip_and_accumulate()
        clipped.append(flat(p.summed_grad for p in opt.params))
    for g, r in zip(clipped, raw, strict=True):
        assert float(g.norm()) <= clip * (1 + 1e-4)
        assert math.isclose(float(g.norm()), min(clip, float(r)), rel_tol=1e-3)  # clipped only when above C
    opt.zero_grad()  # the same four samples in one batch: clipping is per sample, not per batch
    TASK.loss(dp_model(x[:4]), y[:4]).backward()
    opt.clip_and_accumulate()
    torch.testing.assert_close(flat(p.summed_grad for p in opt.params), sum(clipped), rtol=1e-4, atol=1e-6 * clip)


@pytest.mark.parametrize("empty", [True, False])
def test_noise_std_is_noise_multiplier_times_clip_over_expected_batch(empty: bool):
    sigma, clip = 2.0, 0.5
    x, y, model, dp_model, opt, loader = wrapped({"noise_multiplier": sigma, "max_grad_norm": clip}, n=12, batch=4)
    assert opt.expected_batch_size == 4  # 12 records, 3 batches per epoch
    noises = []
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        if empty:  # run_steps on an empty Poisson batch: step() without forward/backward, noise only
            opt.step()
            noises.append(flat(p.grad for p in model.parameters()))
        else:  # compare the noised gradient with the clipped mean Opacus computed from the same batch
            TASK.loss(dp_model(x[:4]), y[:4]).backward()
            opt.clip_and_accumulate()
            clipped = flat(p.summed_grad for p in opt.params) / 4
            opt.add_noise()
            opt.scale_grad()
            noises.append(flat(p.grad for p in opt.params) - clipped)
    noise = torch.cat(noises)
    expected = sigma * clip / 4
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(len(noise))
    assert abs(float(noise.std()) / expected - 1) < 5 / math.sqrt(2 * len(noise))


# --- accounting -----------------------------------------------------------------------------------


def federated_rounds(params: dict, rounds: int, config: FederationConfig, x, y) -> tuple[list[dict], nn.Module]:
    """Rounds as the client app runs them: a fresh model and defense each round, the state kept."""
    state: dict[str, float] = {}
    metrics, model = [], fresh_model()
    for r in range(1, rounds + 1):
        weights = model.state_dict()
        model = fresh_model()
        model.load_state_dict(weights)
        defense = DEFENSES.get("dp_sgd")(**params)
        ctx = ctx_for(config, state, r)
        train_local(model, x, y, task=TASK, config=config, rng=np.random.default_rng(r),
                    hooks=[defense.training_hook(ctx)])
        metrics.append(defense.round_metrics(ctx=ctx))
    return metrics, model


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_grows_by_round_and_matches_one_continuous_privacy_engine(accountant: str):
    x, y = data(10)
    config = FederationConfig(batch_size=2, local_steps=3, lr=1e-3)
    metrics, _ = federated_rounds({"noise_multiplier": 1.1, "accountant": accountant}, 3, config, x, y)
    eps = [m["dp_epsilon"] for m in metrics]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    assert [m["dp_steps"] for m in metrics] == [3, 6, 9] and metrics[0]["dp_delta"] == 1e-5

    model = fresh_model()  # the same 9 steps through one engine, as Opacus itself would count them
    loader = DataLoader(TensorDataset(x, y, torch.arange(10)),
                        batch_sampler=PermutationBatches(10, 2, np.random.default_rng(0)))
    engine = PrivacyEngine(accountant=accountant)
    dp_model, opt, dp_loader = engine.make_private(module=model, optimizer=make_optimizer(model, config),
                                                   data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0)
    _allow_empty_batches(opt)  # as the defense does: Opacus alone fails on run_steps' empty Poisson batches
    run_steps(dp_model, opt, dp_loader, 9, task=TASK)
    assert math.isclose(eps[-1], engine.get_epsilon(1e-5), rel_tol=1e-6)


def test_target_epsilon_is_reached_after_the_planned_rounds():
    x, y = data(8)
    config = FederationConfig(rounds=3, batch_size=2, local_steps=2, lr=1e-3)
    metrics, _ = federated_rounds({"target_epsilon": 4.0, "delta": 1e-4}, 3, config, x, y)
    assert 3.9 < metrics[-1]["dp_epsilon"] <= 4.0 and metrics[0]["dp_epsilon"] < metrics[-1]["dp_epsilon"]


def test_every_step_counts_even_empty_poisson_batches(monkeypatch: pytest.MonkeyPatch):
    empty: list[bool] = []  # per step: did run_steps call step() on an empty batch (no backward)?
    allow = dp_sgd._allow_empty_batches

    def spying(optimizer):
        allow(optimizer)
        step = optimizer.step

        def spy(closure=None):
            empty.append(all(getattr(p, "grad_sample", None) is None for p in optimizer.params))
            return step(closure)

        optimizer.step = spy

    monkeypatch.setattr(dp_sgd, "_allow_empty_batches", spying)
    x, y = data(4)
    config = FederationConfig(batch_size=1, local_steps=12, lr=1e-3)  # rate 1/4: ~1/3 of batches empty
    metrics, model = federated_rounds({"noise_multiplier": 1.0}, 1, config, x, y)
    assert len(empty) == 12 and any(empty) and not all(empty)
    assert metrics[0]["dp_steps"] == 12
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_history_keeps_a_segment_per_sample_rate():
    x, y = data(8)
    state: dict[str, float] = {}
    config = FederationConfig(batch_size=4, local_steps=2, lr=1e-3)
    d1, ctx1 = DPSGD(noise_multiplier=1.0), ctx_for(config, state)
    train_local(fresh_model(), x, y, task=TASK, config=config, rng=np.random.default_rng(0),
                hooks=[d1.training_hook(ctx1)])
    d1.round_metrics(ctx=ctx1)
    d2, ctx2 = DPSGD(noise_multiplier=1.0), ctx_for(config, state, 2)  # the server asks for a 2-image gradient
    grads, _ = one_batch_gradient(fresh_model(), x, y, task=TASK, batch_size=2, rng=np.random.default_rng(1),
                                  hooks=[d2.training_hook(ctx2)])
    m = d2.round_metrics(ctx=ctx2)
    assert state["sample_rate"] == 0.25  # ~the 2 of 8 records asked for, not the whole local set
    assert m["dp_steps"] == 3 and m["dp_epsilon"] == pytest.approx(epsilon([(1.0, 0.5, 2), (1.0, 0.25, 1)], 1e-5))
    assert set(grads) == {name for name, _ in TASK.build_model().named_parameters()}  # no "_module." keys


# --- what leaves the client -------------------------------------------------------------------------


def test_update_has_the_original_keys_and_differs_from_non_private_training():
    x, y = data(8)
    config = FederationConfig(batch_size=4, local_steps=2, lr=1e-2)
    plain = fresh_model()
    train_local(plain, x, y, task=TASK, config=config, rng=np.random.default_rng(0))
    _, private = federated_rounds({"noise_multiplier": 1.0}, 1, config, x, y)
    keys = list(private.state_dict())
    assert keys == list(plain.state_dict()) and not any("_module" in k for k in keys)
    assert any(not torch.equal(plain.state_dict()[k], private.state_dict()[k]) for k in keys)


@pytest.mark.parametrize("clip", [1e-3, 1e2])  # clipped, not clipped
def test_the_attackers_copy_sends_what_opacus_makes_of_one_record(clip: float):
    """An attacker that knows DP-SGD's settings simulates a batch-1 FedSGD reply as Opacus makes it:
    the record's gradient clipped to C, plus N(0, (z C)^2) noise; a multi-step update it cannot follow."""
    x, y = data(1)
    config = FederationConfig(batch_size=1, lr=0.1)
    params = {"max_grad_norm": clip, "poisson_sampling": False}
    quiet = DPSGD(noise_multiplier=1e-9, **params)
    ctx = ctx_for(config, {})
    client, _ = one_batch_gradient(fresh_model(), x, y, task=TASK, batch_size=1, rng=np.random.default_rng(0),
                                   hooks=[quiet.training_hook(ctx)])
    plain, _ = one_batch_gradient(fresh_model(), x, y, task=TASK, batch_size=1, rng=np.random.default_rng(0))
    send = quiet.simulated_sender("gradient")
    copied = send(plain, ctx)
    torch.testing.assert_close(flat(copied.values()), flat(client.values()), rtol=1e-4, atol=1e-6 * clip)
    assert float(flat(copied.values()).norm()) <= clip * (1 + 1e-4)
    noisy = DPSGD(noise_multiplier=2.0, **params).simulated_sender("gradient")
    noise = torch.cat([flat(noisy(plain, ctx).values()) - flat(copied.values()) for _ in range(3)])
    assert abs(float(noise.std()) / (2.0 * clip) - 1) < 0.05
    batch4 = ctx_for(FederationConfig(batch_size=4, lr=0.1), {})  # one record of a batch of 4: a quarter
    torch.testing.assert_close(flat(send(plain, batch4).values()), flat(copied.values()) / 4, rtol=1e-4,
                               atol=1e-6 * clip)
    assert DPSGD(noise_multiplier=1.0).simulated_sender("weights") is None
    assert DPSGD(target_epsilon=3.0, delta=1e-5).simulated_sender("gradient") is None


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "key"), [
    ({"noise_multiplier": 0.0}, "params.noise_multiplier"),
    ({"noise_multiplier": -1.0}, "params.noise_multiplier"),
    ({"noise_multiplier": 1.0, "target_epsilon": 3.0, "delta": 1e-5}, "params.target_epsilon: set exactly one"),
    ({}, "params.target_epsilon: set exactly one"),
    ({"target_epsilon": 3.0}, "params.delta: target_epsilon without delta"),
    ({"noise_multiplier": 1.0, "delta": 1.0}, "params.delta"),
    ({"noise_multiplier": 1.0, "max_grad_norm": 0}, "params.max_grad_norm"),
])
def test_bad_params_are_rejected_naming_the_key(params: dict, key: str):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DPSGD(**params)
    with pytest.raises(ScenarioError, match="defenses.0: " + key.replace(".", r"\.")):
        validate_scenario(tiny_scenario(defenses=[{"name": "dp_sgd", "params": params}]))


def test_delta_defaults_with_noise_multiplier_only():
    assert DPSGD(noise_multiplier=1.0).describe()["delta"] == 1e-5


def test_scenario_checks_the_shared_model_and_the_strategy(monkeypatch: pytest.MonkeyPatch):
    spec = [{"name": "dp_sgd", "params": {"noise_multiplier": 1.0}}]
    validate_scenario(tiny_scenario(defenses=spec))
    validate_scenario(tiny_scenario(defenses=spec, task={"model": {"name": "lenet", "norm": "none"}}))
    with pytest.raises(ScenarioError, match="FedProx"):
        validate_scenario(tiny_scenario(defenses=spec, federation={"strategy": "fedprox"}))
    task_cls = type(TASK)
    monkeypatch.setattr(task_cls, "build_model", lambda self: nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2)))
    with pytest.raises(ScenarioError, match="defenses.0: dp_sgd: .*BatchNorm.*set task.model.norm: group"):
        validate_scenario(tiny_scenario(defenses=spec))


# --- through Flower + Ray -------------------------------------------------------------------------


@pytest.mark.e2e
def test_federated_run_records_growing_epsilon_per_client_and_round(tmp_path: Path):
    raw = tiny_scenario(defenses=[{"name": "dp_sgd", "params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}])
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and not result.failures
    train = [r for r in RunFolder(result.run_dir).metrics() if r.get("kind") == "train"]
    eps = {(r["round"], r["client"]): r["dp_epsilon"] for r in train}
    assert set(eps) == {(1, 0), (1, 1), (2, 0), (2, 1)}
    assert all(0 < eps[1, c] < eps[2, c] for c in (0, 1))
    assert all(r["dp_steps"] == 2 * r["round"] for r in train)
    final = load_file(result.run_dir / "model.safetensors")  # the keys a plain run saves: the model's own
    plain = TASKS.get("brain_age")(config=validate_scenario(raw).task, target_mean=0.0).build_model()
    assert set(final) == set(plain.state_dict())
