"""Update defenses (clip_update, model_noise, prune), label_noise and the shared tensor operations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from fedsim.defenses import DEFENSES
from fedsim.defenses.base import ClientRound
from fedsim.defenses.update_ops import (
    add_noise,
    apply_delta,
    clip_by_global_norm,
    delta,
    global_norm,
    percentile_abs,
    prune_smallest,
    torch_generator,
)
from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from fedsim.seeding import derive_seed
from fedsim.tasks import TASKS
from tests.conftest import tiny_scenario

FAST = settings(max_examples=25, deadline=None)
shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3), min_size=1, max_size=4)


def _update(shape_list: list[list[int]], seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {f"t{i}": torch.randn(s, generator=g) * scale for i, s in enumerate(shape_list)}
    out["count"] = torch.tensor(7)  # a non-float buffer: never touched
    return out


def _ctx(task: object = None, seed: int = 0, state: dict | None = None) -> ClientRound:
    return ClientRound(client=0, server_round=1, task=task, config=None, rng=np.random.default_rng(seed),
                       state={} if state is None else state)


@FAST
@given(shapes, st.integers(0, 2**31), st.floats(0.01, 10), st.floats(0.01, 10))
def test_clipping_bounds_the_global_norm_and_leaves_small_updates_alone(shape_list, seed, scale, max_norm):
    d = _update(shape_list, seed, scale)
    clipped, norm = clip_by_global_norm(d, max_norm)
    assert math.isclose(norm, global_norm(d), rel_tol=1e-9)
    assert global_norm(clipped) <= max_norm + 1e-5
    assert clipped["count"] is d["count"]
    if norm <= max_norm:
        assert all(torch.equal(clipped[k], d[k]) for k in d)
    else:  # same direction
        assert all(torch.allclose(clipped[k], d[k] * (max_norm / norm)) for k in d if k != "count")


@FAST
@given(shapes, st.integers(0, 2**31), st.floats(0.05, 1))
def test_pruning_keeps_exactly_the_largest_fraction(shape_list, seed, keep):
    d = _update(shape_list, seed)
    pruned = prune_smallest(d, keep)
    flat = torch.cat([d[k].reshape(-1) for k in d if k != "count"])
    out = torch.cat([pruned[k].reshape(-1) for k in d if k != "count"])
    kept = out != 0
    assert int(kept.sum()) == round(keep * flat.numel())
    assert torch.equal(out[kept], flat[kept])  # kept entries are unchanged
    if 0 < int(kept.sum()) < flat.numel():
        assert flat[kept].abs().min() >= flat[~kept].abs().max()


def test_pruning_breaks_ties_deterministically_and_skips_integers():
    d = {"a": torch.ones(4), "b": torch.ones(4), "n": torch.tensor([5, 6])}
    pruned = prune_smallest(d, 0.5)
    assert pruned["a"].tolist() == [1, 1, 1, 1] and pruned["b"].tolist() == [0, 0, 0, 0]
    assert torch.equal(pruned["n"], d["n"])


def test_delta_round_trips_and_percentile_matches_numpy():
    ref, upd = _update([[3, 4], [5]], 1), _update([[3, 4], [5]], 2)
    back = apply_delta(ref, delta(upd, ref))
    assert all(torch.allclose(back[k], upd[k]) for k in upd) and torch.equal(back["count"], upd["count"])
    values = np.abs(np.concatenate([upd["t0"].numpy().ravel(), upd["t1"].numpy().ravel()]))
    assert math.isclose(percentile_abs(upd, 95), float(np.percentile(values, 95)), rel_tol=1e-6)


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_added_noise_has_the_configured_std(distribution):
    zeros = {"w": torch.zeros(400, 500)}
    noisy = add_noise(zeros, 0.05, torch_generator(4), distribution)["w"]
    assert noisy.dtype == torch.float32
    assert abs(float(noisy.std()) / 0.05 - 1) < 0.02 and abs(float(noisy.mean())) < 1e-3


def test_clip_update_defense_clips_the_change_not_the_weights():
    ref = {"w": torch.full((100,), 5.0)}
    defense = DEFENSES.get("clip_update")(max_norm=1.0)
    sent = defense.transform_update({"w": ref["w"] + 1.0}, kind="weights", reference=ref, ctx=_ctx())
    assert math.isclose(global_norm(delta(sent, ref)), 1.0, rel_tol=1e-5)
    assert defense.round_metrics(ctx=_ctx()) == pytest.approx({"update_norm": 10.0, "update_clipped": 1.0})
    small = {"w": ref["w"] + 0.01}
    assert torch.allclose(defense.transform_update(small, kind="weights", reference=ref, ctx=_ctx())["w"], small["w"])
    assert defense.round_metrics(ctx=_ctx())["update_clipped"] == 0.0
    grad = defense.transform_update({"w": torch.ones(100)}, kind="gradient", reference=ref, ctx=_ctx())
    assert math.isclose(global_norm(grad), 1.0, rel_tol=1e-5)  # a gradient is itself the change


def test_clip_update_noise_std_is_multiplier_times_norm():
    ref = {"w": torch.zeros(200_000)}
    defense = DEFENSES.get("clip_update")(max_norm=2.0, noise_multiplier=0.1)
    sent = defense.transform_update(dict(ref), kind="weights", reference=ref, ctx=_ctx())
    assert abs(float(sent["w"].std()) / 0.2 - 1) < 0.02


def test_model_noise_absolute_and_relative_scale():
    g = torch.Generator().manual_seed(0)
    ref = {"w": torch.randn(200_000, generator=g)}
    upd = {"w": ref["w"] + torch.randn(200_000, generator=g) * 0.3}
    absolute = DEFENSES.get("model_noise")(sigma=0.02)
    sent = absolute.transform_update(upd, kind="weights", reference=ref, ctx=_ctx())
    assert abs(float((sent["w"] - upd["w"]).std()) / 0.02 - 1) < 0.02
    assert absolute.round_metrics(ctx=_ctx()) == {"model_noise_std": 0.02}
    relative = DEFENSES.get("model_noise")(sigma0=0.1)
    expected = 0.1 * percentile_abs(delta(upd, ref), 95)  # from the change (~0.3 * 1.96), not the weights
    sent = relative.transform_update(upd, kind="weights", reference=ref, ctx=_ctx())
    assert math.isclose(relative.round_metrics(ctx=_ctx())["model_noise_std"], expected, rel_tol=1e-9)
    assert abs(float((sent["w"] - upd["w"]).std()) / expected - 1) < 0.02
    assert 0.05 < expected < 0.07


def test_prune_defense_keeps_the_largest_changes():
    ref = {"w": torch.full((10,), 3.0)}
    upd = {"w": ref["w"] + torch.arange(10.0)}
    defense = DEFENSES.get("prune")(keep=0.3)
    sent = defense.transform_update(upd, kind="weights", reference=ref, ctx=_ctx())
    assert (sent["w"] - ref["w"]).tolist() == [0] * 7 + [7, 8, 9]
    assert defense.round_metrics(ctx=_ctx()) == {"prune_kept": pytest.approx(0.3)}


FIVE_CLASSES = SimpleNamespace(n_classes=5)


def test_randomized_response_flips_at_rate_p_and_never_to_the_same_class():
    y = torch.from_numpy(np.random.default_rng(1).integers(0, 5, 20_000))
    defense = DEFENSES.get("label_noise")(p=0.3)
    _, noisy = defense.transform_data(torch.zeros(1), y, ctx=_ctx(FIVE_CLASSES))
    n, rate = len(y), float((noisy != y).double().mean())
    assert noisy.dtype == torch.int64 and int(noisy.min()) >= 0 and int(noisy.max()) < 5
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    assert defense.round_metrics(ctx=_ctx()) == {"label_flip_rate": pytest.approx(rate)}
    from fedsim.defenses.label_noise import randomized_response

    always = randomized_response(y, 1.0, 5, np.random.default_rng(2))  # the YAML refuses p = 1 (it reveals all)
    assert bool((always != y).all())  # a flip never lands on the same class
    counts = np.bincount(always[y == 0].numpy(), minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 0.2 * counts[1:].sum()  # uniform over the other four


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_regression_label_noise_has_the_configured_std_in_years(distribution):
    age = torch.full((50_000,), 60.0)
    defense = DEFENSES.get("label_noise")(scale=5.0, distribution=distribution)
    _, noisy = defense.transform_data(None, age, ctx=_ctx(TASKS.get("brain_age")))
    assert noisy.dtype == torch.float32
    assert abs(float(noisy.std()) / 5.0 - 1) < 0.03 and abs(float(noisy.mean()) - 60) < 0.1


def test_label_noise_is_fresh_each_round_unless_fixed():
    y = torch.zeros(1000, dtype=torch.int64)
    fresh = DEFENSES.get("label_noise")(p=0.5)
    a, b = (fresh.transform_data(None, y, ctx=_ctx(FIVE_CLASSES, seed=s))[1] for s in (1, 2))
    assert not torch.equal(a, b)
    fixed, state = DEFENSES.get("label_noise")(p=0.5, fixed=True), {}
    a, b = (fixed.transform_data(None, y, ctx=_ctx(FIVE_CLASSES, seed=s, state=state))[1] for s in (1, 2))
    assert torch.equal(a, b) and "seed" in state


@pytest.mark.parametrize(("defense", "match"), [
    ({"name": "model_noise", "params": {"sigma": 0}}, r"defenses\.0: params\.sigma: .*greater than 0"),
    ({"name": "model_noise", "params": {"sigma": -0.1}}, r"defenses\.0: params\.sigma: "),
    ({"name": "model_noise", "params": {"sigma0": 0}}, r"defenses\.0: params\.sigma0: "),
    ({"name": "model_noise", "params": {"sigma": 0.1, "sigma0": 0.1}}, r"defenses\.0: params\.sigma0: .*exactly one"),
    ({"name": "model_noise", "params": {}}, r"defenses\.0: params\.sigma0: .*exactly one"),
    ({"name": "prune", "params": {"keep": 0}}, r"defenses\.0: params\.keep: "),
    ({"name": "clip_update", "params": {"max_norm": 1, "noise_multiplier": -1}}, r"defenses\.0: params\.noise_mult"),
    ({"name": "label_noise", "params": {"p": 0.1}}, r"defenses\.0: label_noise: params\.p: .*regression"),
    ({"name": "label_noise", "params": {}}, r"defenses\.0: params: give p"),
])
def test_params_errors_name_the_key(defense, match):
    with pytest.raises(ScenarioError, match=match):
        validate_scenario(tiny_scenario(defenses=[defense]))


def test_label_noise_scale_on_a_classification_task_is_refused():
    raw = tiny_scenario(task={"name": "sex_classification"}, defenses=[{"name": "label_noise", "params": {"scale": 5}}])
    with pytest.raises(ScenarioError, match=r"defenses\.0: label_noise: params\.scale: .*classification.*params\.p"):
        validate_scenario(raw)


@pytest.mark.e2e
def test_defended_update_is_what_the_server_sees(tmp_path: Path):
    raw = tiny_scenario(
        defenses=[{"name": "label_noise", "params": {"scale": 5}},
                  {"name": "clip_update", "params": {"max_norm": 1, "noise_multiplier": 0.01}},
                  {"name": "prune", "params": {"keep": 0.5}},
                  {"name": "model_noise", "params": {"sigma": 0.02}}],
        server={"targets": {"clients": [0], "rounds": [1]}, "capture": True}, federation={"rounds": 1},
        attacks=[{"name": "learned_inversion", "params": {"aux_subjects": 40}},
                 {"name": "adaptive_learned_inversion", "params": {"aux_subjects": 40}}])
    scenario = validate_scenario(raw)
    result = run_scenario(scenario, out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and not result.failures
    folder = result.run_dir / "observations/round001_client000"
    seen, sent = load_file(folder / "update.safetensors"), load_file(folder / "global.safetensors")
    change = {k: seen[k] - sent[k] for k in sent}
    n = sum(v.numel() for v in change.values())
    # model_noise runs after prune, so the server sees a dense change: pruning's zeros are buried in noise.
    assert sum(int((v != 0).sum()) for v in change.values()) > 0.99 * n
    # Take the noise back out (it is seeded by (seed, "defense", round, client, defense index)): what is
    # left is the pruned change, at most half of it non-zero, with the clipped (+ clip noise) norm.
    order = TASKS.get(scenario.task.name)(config=scenario.task, target_mean=0.0).build_model().state_dict()
    rng = np.random.default_rng(derive_seed(scenario.seed, "defense", 1, 0, 3))
    noise = add_noise({k: torch.zeros_like(sent[k]) for k in order}, 0.02, torch_generator(int(rng.integers(2**63))))
    residual = {k: change[k] - noise[k] for k in order}
    nonzero = sum(int((v.abs() > 1e-6).sum()) for v in residual.values())
    assert nonzero == round(0.5 * n)
    assert global_norm(residual) <= 1.0 + 1.2 * 0.01 * math.sqrt(n)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    mine = next(r for r in records if r["kind"] == "train" and r["round"] == 1 and r["client"] == 0)
    assert mine["update_norm"] > 0 and mine["update_clipped"] == float(mine["update_norm"] > 1)
    assert mine["prune_kept"] == pytest.approx(0.5, abs=1 / n) and mine["model_noise_std"] == 0.02
    # the learned inversion replays the client's 2 Adam steps of batch 4 on its own scans, and is
    # scored on the defended weight update the server saw
    row, adaptive = result.summary["attacks"]
    assert row["status"] == "ok" and row["kind"] == "weights" and row["replayed"] == "adam x 2 steps, batch 4, 8 scans"
    # the adaptive attacker replays the same steps through its own copies of the update defenses
    assert adaptive["status"] == "ok" and adaptive["replayed"] == row["replayed"] and "defenses" in adaptive["threat"]
    assert adaptive["copied"] == "clip_update, model_noise, prune" and adaptive["not_copied"] == "label_noise"
