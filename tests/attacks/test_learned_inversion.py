"""Learned gradient inversion: the normalisation that makes it work, re-identification through a
global-pooling CNN, the memory-bounded fit, and its bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.attacks.gradient_inversion import learned
from fedsim.attacks.gradient_inversion.client_steps import ClientSteps, replay
from fedsim.attacks.gradient_inversion.optimize import gradients_of
from fedsim.attacks.metrics import score_reconstruction
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.loading import validate_scenario
from fedsim.scenario import ScenarioError, TaskConfig
from fedsim.tasks.brain_age import BrainAgeSliceTask, zscore_volumes
from tests.conftest import tiny_scenario

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cohort_slices():
    """Central axial slices of 16^2 of 340 subjects, with their (standardised) ages."""
    cohort = load_cohort(CohortSpec(n_subjects=340, shape=16, n_sites=3, seed=5))
    task = BrainAgeSliceTask(config=TaskConfig(model={"channels": [8, 16, 32]}), target_mean=55.0, target_std=18.0)
    return task, *task.tensors(cohort, list(range(340)))


@pytest.fixture(scope="module")
def slices(cohort_slices):
    """300 scans for the attacker, 40 victims from other subjects, through an untrained network."""
    task, x, y = cohort_slices
    torch.manual_seed(0)
    return task, task.build_model(), x[:300], x[300:], y[300:]


def observe(task, model, x, y):
    """What a client sends at batch 1, as the map's input."""
    names = learned.trainable_names(model)
    grads = dict(zip(names, gradients_of(model, task.loss, x, y), strict=True))
    return learned.observed_features(grads, names, learned.output_bias(model)), grads


def test_the_normalised_gradient_is_the_scans_own_feature_whatever_its_label(slices):
    task, model, _, xv, yv = slices
    names = learned.trainable_names(model)
    bias = sum(p.numel() for n, p in model.named_parameters() if n in names[:names.index(learned.output_bias(model))])
    simulated = learned.normalise(next(learned.output_gradients(model, xv[:1], names)), bias)
    sent = {}
    for label in (float(yv[0]), float(yv[0]) + 30.0):  # the attacker never needs the age
        observed, sent[label] = observe(task, model, xv[:1], torch.tensor([label]))
        torch.testing.assert_close(observed, simulated, rtol=1e-4, atol=1e-6)
    first, second = sent.values()
    assert not torch.allclose(first[names[0]], second[names[0]])  # though what the client sent differs


def test_learned_map_reidentifies_victims_the_prior_cannot(slices):
    task, model, xa, xv, yv = slices
    inversion = learned.fit_inversion(model, xa, augment_copies=2, seed=0)
    assert inversion.features.dtype == torch.float16 and len(inversion.features) == 600
    assert inversion.ridge in learned.RIDGE_GRID
    recon = inversion.predict(torch.cat([observe(task, model, xv[i:i + 1], yv[i:i + 1])[0] for i in range(len(xv))]))
    scores = score_reconstruction(recon, xv, prior=xa.mean(0), candidates=xv, true_index=list(range(len(xv))),
                                 batch=False)
    assert scores["reid_top1"] >= 0.5 and scores["psnr_gain"] > 1.0  # chance is 1 in 40
    wild = inversion.predict(1e4 * observe(task, model, xv[:1], yv[:1])[0])  # e.g. a noised update
    assert float((wild.flatten(1) - inversion.mean).norm()) <= inversion.max_spread * (1 + 1e-5)

    # the map is of these weights: fitted through a differently initialised network, it finds nobody
    torch.manual_seed(1)
    other = learned.fit_inversion(task.build_model(), xa, augment_copies=2, seed=0)
    wrong = other.predict(torch.cat([observe(task, model, xv[i:i + 1], yv[i:i + 1])[0] for i in range(len(xv))]))
    assert score_reconstruction(wrong, xv, prior=xa.mean(0), candidates=xv, true_index=list(range(len(xv))),
                                batch=False)["reid_top1"] < scores["reid_top1"] / 2


def test_neighbouring_slices_are_other_views_of_the_same_people(cohort_slices):
    task, x, y = cohort_slices
    cohort = load_cohort(CohortSpec(n_subjects=340, shape=16, n_sites=3, seed=5))
    views, targets = task.neighbour_slices(cohort, [0, 1, 2], 2)
    assert views.shape == (15, 1, 16, 16) and torch.equal(targets, y[:3].repeat(5))
    torch.testing.assert_close(views[:3], x[:3])  # the central slices first, as the clients see them
    below = zscore_volumes(cohort.images[[0, 1, 2]][..., 16 // 2 - 1])
    torch.testing.assert_close(views[3:6, 0], torch.from_numpy(below))
    assert not torch.allclose(views[6:9], views[3:6])  # then the slice above
    with pytest.raises(ValueError, match="spread: 8 slices either side"):
        task.neighbour_slices(cohort, [0], 8)


def test_the_ridge_is_chosen_on_people_held_out_with_all_their_views(cohort_slices):
    held = learned.held_out(300, 100, 0.15, np.random.default_rng(0))
    assert len(held) == 45 and len(set((held % 100).tolist())) == 15
    one_view = learned.held_out(40, 40, 0.15, np.random.default_rng(0))  # the split it always was
    assert sorted(one_view.tolist()) == sorted(np.random.default_rng(0).permutation(40)[:6].tolist())
    with pytest.raises(ValueError, match="not 100 people's views"):
        learned.held_out(301, 100, 0.15, np.random.default_rng(0))

    task, x, y = cohort_slices
    cohort = load_cohort(CohortSpec(n_subjects=340, shape=16, n_sites=3, seed=5))
    views, _ = task.neighbour_slices(cohort, list(range(100)), 1)
    torch.manual_seed(0)
    model = task.build_model()
    inversion = learned.fit_inversion(model, views, augment_copies=1, subjects=100, seed=0)
    assert len(inversion.features) == 300 and inversion.ridge in learned.RIDGE_GRID
    xv, yv = x[300:], y[300:]
    recon = inversion.predict(torch.cat([observe(task, model, xv[i:i + 1], yv[i:i + 1])[0] for i in range(len(xv))]))
    scores = score_reconstruction(recon, xv, prior=views[:100].mean(0), candidates=xv,
                                  true_index=list(range(len(xv))), batch=False)
    assert scores["reid_top1"] >= 0.3  # chance is 1 in 40


def test_an_attacker_that_copies_the_pruning_fits_through_it(slices, cohort_slices):
    """Pruned to 10% (or noised, or clipped and noised, by the update or DP-SGD), the plain map's error
    normalisation fails; a map fitted on the attacker's own scans through its copy of the defense (the
    top floor builds it) does much better."""
    from fedsim.attacks.gradient_inversion.adaptive import through_updates
    from fedsim.defense_copies import defense_copies

    task, model, xa, xv, yv = slices
    ya = cohort_slices[2][:300]  # the attacker's own patients' ages: clipping depends on the gradient's scale
    names, bias = learned.trainable_names(model), learned.output_bias(model)
    plain = learned.fit_inversion(model, xa, augment_copies=2, seed=0)
    found = {}
    for defense in ({"name": "prune", "params": {"keep": 0.1}}, {"name": "model_noise", "params": {"sigma0": 1.0}},
                    {"name": "clip_update", "params": {"max_norm": 1.0, "noise_multiplier": 0.01}},
                    {"name": "dp_sgd", "params": {"max_grad_norm": 1.0, "noise_multiplier": 0.01}}):
        (copy,) = defense_copies(validate_scenario(tiny_scenario(defenses=[defense])), task)
        assert copy.send is not None and copy.train_shown is None
        assert copy.kinds == (("gradient",) if defense["name"] == "dp_sgd" else ("gradient", "weights"))
        aware = learned.fit_inversion(model, xa, targets=ya, loss_fn=task.loss, augment_copies=2, seed=0,
                                      sent=through_updates([copy], model, names))
        sent = [copy.send(observe(task, model, xv[i:i + 1], yv[i:i + 1])[1]) for i in range(len(xv))]

        def plain_map(g):
            try:
                return plain.predict(learned.observed_features(g, names, bias))
            except ValueError:  # the bias entry was pruned away
                return xa.mean(0, keepdim=True)

        for attacker, recon in (("plain", [plain_map(g) for g in sent]),
                                ("adaptive", [aware.predict(learned.observed_features(g, names, bias, unit_norm=True))
                                              for g in sent])):
            found[defense["name"], attacker] = score_reconstruction(
                torch.cat(recon), xv, prior=xa.mean(0), candidates=xv, true_index=list(range(len(xv))),
                batch=False)["reid_top1"]
    assert found["prune", "plain"] <= 0.2 and found["prune", "adaptive"] >= 0.4  # chance is 1 in 40
    assert found["model_noise", "adaptive"] > found["model_noise", "plain"]
    assert found["clip_update", "adaptive"] > found["clip_update", "plain"] + 0.2
    assert found["dp_sgd", "adaptive"] > found["dp_sgd", "plain"] + 0.2  # at batch 1: clip + noise per record


def test_copies_of_one_defense_at_two_strengths_get_fits_of_their_own(slices):
    """A sweep over a defense's strength runs each point from the same global weights: the cached fit
    (and copy) must be told apart by the defense's settings, not its name alone."""
    from fedsim.attacks.base import Observation
    from fedsim.attacks.gradient_inversion.adaptive import AdaptiveLearnedInversion
    from fedsim.defense_copies import defense_copies

    task, model = slices[0], slices[1]
    tags = []
    for keep in (0.1, 0.01):
        scenario = validate_scenario(tiny_scenario(defenses=[{"name": "prune", "params": {"keep": keep}}]))
        copies = defense_copies(scenario, task)
        obs = Observation(round=1, client=0, kind="gradient", update={}, global_state=model.state_dict(),
                          num_examples=1, defenses=tuple(copies))
        adapted = AdaptiveLearnedInversion().adapted(obs, model)
        assert adapted["copied"] == ["prune"]
        tags.append(adapted["tag"])
    assert tags[0] != tags[1]


def test_the_ridge_chosen_on_the_attackers_scans_is_near_the_best_for_the_victims(slices):
    """The held-out choice scores re-identification as the victims are scored (whole scans, each
    z-scored): scored on mean-free images instead, it preferred ridges that shrink every
    reconstruction toward the mean, which then finds the most typical scan."""
    task, model, xa, xv, yv = slices
    feats = torch.cat([observe(task, model, xv[i:i + 1], yv[i:i + 1])[0] for i in range(len(xv))])

    def victims_found(inversion):
        return score_reconstruction(inversion.predict(feats), xv, prior=xa.mean(0), candidates=xv,
                                    true_index=list(range(len(xv))), batch=False)["reid_top1"]

    chosen = learned.fit_inversion(model, xa, augment_copies=2, seed=0)
    others = [victims_found(learned.fit_inversion(model, xa, augment_copies=2, seed=0, ridge=r))
              for r in (1e-3, 1e-2, 1e-1, 1.0)]
    assert victims_found(chosen) >= max(others) - 0.05  # 2 of 40 victims


def test_the_blockwise_gram_is_the_gram():
    a = torch.randn(700, 33).half()
    b = torch.randn(530, 33).half()
    torch.testing.assert_close(learned.gram_rows(a, b), (a.double() @ b.double().T) / 33, rtol=1e-5, atol=1e-5)


def test_pairs_are_the_scan_its_flip_and_shifts():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    pairs = learned.Pairs.plan(2, 4, spatial=2, seed=0)
    out = pairs.scans(x, slice(None))
    assert out.shape == (8, 1, 4, 4) and pairs.original.tolist() == [True, True] + [False] * 6
    assert torch.equal(out[0], x[0]) and torch.equal(out[3], torch.flip(x[1], dims=[1]))
    assert sorted(out[4].flatten().tolist()) == sorted(x[0].flatten().tolist())  # a shift keeps every voxel
    more = learned.Pairs.plan(1, 6, spatial=2, seed=0).scans(x[:1], slice(None))  # copies beyond 4: more shifts
    assert len({tuple(m.flatten().tolist()) for m in more}) == 6


@pytest.mark.parametrize(("change", "message"), [
    ({"aux_subjects": 5}, "params.aux_subjects: Input should be greater than or equal to 20"),
    ({"ridge": 0}, "params.ridge: Input should be greater than 0"),
])
def test_bad_params_are_one_line_errors(change, message):
    raw = tiny_scenario(server={"behaviours": [{"name": "request_gradient"}], "targets": {"clients": [0]}},
                        attacks=[{"name": "learned_inversion", "params": change}])
    with pytest.raises(ScenarioError, match=f"attacks.0: {message}"):
        validate_scenario(raw)


def test_what_it_cannot_invert_is_refused_before_training(tmp_path):
    from fedsim.runner import run_scenario

    fedavg = tiny_scenario(attacks=[{"name": "learned_inversion", "params": {"aux_subjects": 20, "max_images": 7}}])
    with pytest.raises(ScenarioError, match="attacks.0: learned_inversion: params.max_images: a targeted client's "
                                            "weight update mixes 8 scans"):  # 2 local steps x batch 4
        run_scenario(validate_scenario(fedavg), out_dir=tmp_path, log=lambda _: None)
    classes = tiny_scenario(task={"name": "sex_classification"},
                            server={"behaviours": [{"name": "request_gradient"}]},
                            attacks=[{"name": "learned_inversion", "params": {"aux_subjects": 20}}])
    with pytest.raises(ScenarioError, match="needs a network with one output"):
        run_scenario(validate_scenario(classes), out_dir=tmp_path, log=lambda _: None)
    volumes = tiny_scenario(server={"behaviours": [{"name": "request_gradient"}]},
                            attacks=[{"name": "learned_inversion", "params": {"aux_subjects": 20, "slices": 2}}])
    with pytest.raises(ScenarioError, match="params.slices: task 'brain_age' trains on whole volumes"):
        run_scenario(validate_scenario(volumes), out_dir=tmp_path, log=lambda _: None)
    deep = tiny_scenario(task={"name": "brain_age_slice"}, server={"behaviours": [{"name": "request_gradient"}]},
                         attacks=[{"name": "learned_inversion", "params": {"aux_subjects": 20, "slices": 8}}])
    with pytest.raises(ScenarioError, match="params.slices: 8 slices either side of the centre do not fit in a "
                                            "volume of depth 16"):
        run_scenario(validate_scenario(deep), out_dir=tmp_path, log=lambda _: None)
    assert not list(tmp_path.glob("*/*"))  # nothing trained, no run folder


def test_the_attackers_slices_come_from_its_own_people_or_the_servers_held_out_scans(monkeypatch):
    from fedsim import experiment as experiment_module
    from fedsim.data import datasets

    exp = experiment_module.prepare(validate_scenario(tiny_scenario(task={"name": "brain_age_slice"})),
                                    log=lambda _: None)
    central, ages = exp.population(10)
    views, targets = exp.population(10, slices=1)
    assert views.shape == (30, 1, 16, 16) and torch.equal(views[:10], central) and torch.equal(targets[10:20], ages)
    monkeypatch.setattr(datasets, "load_population", lambda *a, **k: None)  # a dataset without a population
    exp = experiment_module.prepare(exp.scenario, log=lambda _: None)
    views, _ = exp.population(4, slices=1)
    assert views.shape == (12, 1, 16, 16) and torch.equal(views[:4], exp.x_test[:4])
    volumes = experiment_module.prepare(validate_scenario(tiny_scenario()), log=lambda _: None)
    with pytest.raises(ValueError, match="task 'brain_age' has no neighbouring slices"):
        volumes.population(4, slices=1)


def test_errors_of_a_batch_weight_the_mean_of_its_reconstructions(slices):
    """At batch 2 the normalised gradient is the error-weighted mean of the two scans' features."""
    task, model, _, xv, yv = slices
    names = learned.trainable_names(model)
    both, _ = observe(task, model, xv[:2], yv[:2])
    one, two = observe(task, model, xv[:1], yv[:1])[0], observe(task, model, xv[1:2], yv[1:2])[0]
    errors = (model(xv[:2]) - yv[:2]).detach()
    expected = (errors[0] * one + errors[1] * two) / errors.sum()
    torch.testing.assert_close(both, expected, rtol=1e-3, atol=1e-5)
    assert len(names) > 2
    assert np.isfinite(both.numpy()).all()


@pytest.mark.parametrize(("optimizer", "lr"), [
    ({"name": "sgd", "momentum": 0.9, "weight_decay": 1e-3}, 1e-5),  # the untrained head's error is large
    ({"name": "adam", "momentum": 0.0, "weight_decay": 1e-3}, 1e-2),
])
def test_replayed_weight_updates_are_what_torch_optim_sends(slices, optimizer, lr):
    """Three pseudo-clients, 3 steps of batch 2 over 4 scans each (cycling), side by side."""
    task, model, xa, _, _ = slices
    plan = ClientSteps.of("weights", images=4, batch_size=2, local_steps=3, lr=lr, optimizer=optimizer)
    x, y = xa[:12].reshape(3, 4, *xa.shape[1:]), torch.linspace(-1, 1, 12).reshape(3, 4)
    names = learned.trainable_names(model)
    replayed = replay(model, task.loss, x, y, plan, names)
    live = learned.live_entries(model, xa, names)
    assert 0 < (~live).sum() < 100  # the conv biases in front of instance norm
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for c in range(3):
        model.load_state_dict(start)
        opt = (torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
               if optimizer["name"] == "sgd" else torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-3))
        for batch in plan.schedule():
            opt.zero_grad()
            task.loss(model(x[c, batch]), y[c, batch]).backward()
            opt.step()
        sent = torch.cat([(dict(model.named_parameters())[n].detach() - start[n]).flatten() for n in names])
        assert sent.abs().max() < 1.0  # a sane step, not a divergence
        # float32 round-off (it varies by CPU) divided by Adam's small second moments
        torch.testing.assert_close(replayed[c, live], sent[live], rtol=1e-3, atol=3e-6 * float(sent.abs().max()))
    model.load_state_dict(start)


def test_a_fedavg_adam_update_is_inverted_through_the_replayed_client(slices, cohort_slices):
    """Two Adam steps on one scan: the update is sign-like, nothing like a gradient, yet a map
    fitted on replayed pseudo-clients re-identifies the scan."""
    task, model, xa, xv, yv = slices
    plan = ClientSteps.of("weights", images=1, batch_size=1, local_steps=2, lr=1e-3,
                          optimizer={"name": "adam", "weight_decay": 0.0})
    ages = cohort_slices[2][:300]  # the attacker knows its own patients' ages
    inversion = learned.fit_inversion(model, xa, targets=ages, loss_fn=task.loss, plan=plan, augment_copies=2, seed=0)
    names = learned.trainable_names(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    observed = []
    for i in range(len(xv)):  # each victim's client: two Adam steps on its scan, from the global weights
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            opt.zero_grad()
            task.loss(model(xv[i:i + 1]), yv[i:i + 1]).backward()
            opt.step()
        observed.append(learned.observed_features(model.state_dict(), names, learned.output_bias(model),
                                                  global_state=start))
        model.load_state_dict(start)
    recon = inversion.predict(torch.cat(observed))
    scores = score_reconstruction(recon, xv, prior=xa.mean(0), candidates=xv, true_index=list(range(len(xv))),
                                 batch=False)
    assert scores["reid_top1"] >= 0.5 and scores["psnr_gain"] > 1.0  # chance is 1 in 40
    gradient_map = learned.fit_inversion(model, xa, augment_copies=2, seed=0)  # the FedSGD map, misapplied
    wrong = score_reconstruction(gradient_map.predict(torch.cat(observed)), xv, prior=xa.mean(0), candidates=xv,
                                 true_index=list(range(len(xv))),
                                 batch=False)
    assert wrong["reid_top1"] < scores["reid_top1"]
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
