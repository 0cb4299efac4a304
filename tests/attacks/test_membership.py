"""Membership inference: metrics that a wrong formula would break, and attacks on toy overfit models."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from torch import nn

from fedsim.attacks.membership.blackbox import (
    lira_scores,
    loss_scores,
    one_at_a_time,
    shadow_attack,
    threshold_attack,
)
from fedsim.attacks.membership.metrics import (
    best_empirical_epsilon,
    empirical_epsilon,
    membership_metrics,
    roc_figure,
)
from fedsim.attacks.membership.whitebox import (
    gradient_feature_names,
    gradient_features,
    monotone_logistic,
    update_alignment_scores,
    update_loss_drop_scores,
    whitebox_attack,
)

torch.set_num_threads(1)
D = 12


# ---------------------------------------------------------------- metrics

def test_perfect_separation() -> None:
    labels = np.r_[np.ones(50), np.zeros(50)]
    m = membership_metrics(np.r_[np.linspace(2, 3, 50), np.linspace(0, 1, 50)], labels)
    assert m["auc"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["tpr_at_1pct_fpr"] == 1.0 and m["tpr_at_0_1pct_fpr"] == 1.0
    assert (m["n_members"], m["n_nonmembers"]) == (50, 50)
    json.dumps(m)  # plain floats and ints only


def test_random_scores_are_chance() -> None:
    rng = np.random.default_rng(0)
    m = membership_metrics(rng.normal(size=4000), rng.integers(0, 2, 4000))
    assert abs(m["auc"] - 0.5) < 0.03
    assert m["tpr_at_1pct_fpr"] < 0.03


def test_balanced_accuracy_hand_example() -> None:
    # members 0.9 0.8 0.3, non-members 0.7 0.2 0.1: threshold 0.75 gives TPR 2/3, TNR 1 -> 5/6;
    # threshold 0.25 gives TPR 1, TNR 2/3 -> 5/6; nothing does better
    m = membership_metrics(np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1]), np.array([1, 1, 1, 0, 0, 0]))
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    assert m["auc"] == pytest.approx(8 / 9)


def test_tpr_at_fpr_on_a_coarse_grid() -> None:
    # 10 non-members: FPR moves in steps of 0.1, so 1% and 0.1% FPR mean "no false positive at all"
    members = np.array([10.0, 9.0, 8.0, 5.5, 5.2])
    non = np.array([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    m = membership_metrics(np.r_[members, non], np.r_[np.ones(5), np.zeros(10)])
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.6)  # the three above the best non-member
    assert m["tpr_at_0_1pct_fpr"] == pytest.approx(0.6)
    top_non = membership_metrics(np.r_[members, 11.0, non[1:]], np.r_[np.ones(5), np.zeros(10)])
    assert top_non["tpr_at_1pct_fpr"] == 0.0  # every threshold with a true positive has FPR >= 10%


# ---------------------------------------------------------------- empirical epsilon

def test_empirical_epsilon_zero_at_chance_and_grows_with_separation() -> None:
    kw = dict(n_members=500, n_nonmembers=500, delta=1e-5)
    assert empirical_epsilon(tpr=0.5, fpr=0.5, **kw) == 0.0
    eps = [empirical_epsilon(tpr=0.5 + s, fpr=0.5 - s, **kw) for s in (0.05, 0.15, 0.3, 0.45)]
    assert eps == sorted(eps) and eps[0] < eps[-1] and eps[-1] > 2.0
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(300), np.zeros(300)]
    assert best_empirical_epsilon(rng.normal(size=600), labels, delta=1e-5) < 0.2


@settings(max_examples=60, deadline=None)
@given(tp=st.integers(0, 200), fp=st.integers(0, 200), d_tp=st.integers(0, 50), d_fp=st.integers(0, 50))
def test_empirical_epsilon_is_monotone(tp: int, fp: int, d_tp: int, d_fp: int) -> None:
    """More true positives or fewer false positives can only raise the bound; it is never negative."""
    def eps(t: int, f: int) -> float:
        return empirical_epsilon(tpr=min(t, 250) / 250, fpr=min(f, 250) / 250, n_members=250,
                                 n_nonmembers=250, delta=1e-5)

    base = eps(tp, fp)
    assert base >= 0.0
    if tp <= fp:  # no better than chance: no evidence against any epsilon
        assert base == 0.0
    assert eps(tp + d_tp, fp) >= base - 1e-12
    assert eps(tp, max(fp - d_fp, 0)) >= base - 1e-12


@pytest.mark.parametrize("eps_true", [0.5, 1.0, 2.0])
def test_empirical_epsilon_never_beats_randomized_response(eps_true: float) -> None:
    """An eps-DP randomized response lets the attacker guess right w.p. e^eps / (1 + e^eps): the 95%
    lower bound may exceed eps in about 5% of trials at most (the scanned one even less)."""
    p = math.exp(eps_true) / (1 + math.exp(eps_true))
    n, trials, over_point, over_scan, bounds = 1000, 40, 0, 0, []
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        guess_in, guess_out = rng.random(n) < p, rng.random(n) < 1 - p
        point = empirical_epsilon(tpr=guess_in.mean(), fpr=guess_out.mean(), n_members=n, n_nonmembers=n, delta=0.0)
        scan = best_empirical_epsilon(np.r_[guess_in, guess_out].astype(float), np.r_[np.ones(n), np.zeros(n)],
                                      delta=0.0)
        over_point += point > eps_true
        over_scan += scan > eps_true
        bounds.append(scan)
    assert over_point <= 0.15 * trials and over_scan <= 0.1 * trials
    assert np.median(bounds) > 0.6 * eps_true  # and the bound is not vacuous


def test_roc_points_are_the_scores_thresholds_and_the_figure_draws_them(tmp_path, monkeypatch) -> None:
    """Every ROC point is (FPR, TPR) of one threshold on the scores, counted by hand; the AUC is the
    chance a member outscores a non-member (ties half); and the figure plots exactly those points."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(30), np.zeros(40)].astype(bool)
    scores = np.round(rng.normal(size=70) + labels, 1)  # rounded: ties between members and non-members
    m = membership_metrics(scores, labels)
    points = {(0.0, 0.0)} | {(float((scores[~labels] >= s).mean()), float((scores[labels] >= s).mean()))
                             for s in np.unique(scores)}
    assert set(zip(m["fpr"], m["tpr"], strict=True)) == points
    wins = (scores[labels][:, None] > scores[~labels][None]).mean() + 0.5 * (
        scores[labels][:, None] == scores[~labels][None]).mean()
    assert m["auc"] == pytest.approx(wins) and m["auc"] == pytest.approx(np.trapezoid(m["tpr"], m["fpr"]))
    assert m["balanced_accuracy"] == pytest.approx(max((t + 1 - f) / 2 for f, t in points))

    axes = []
    subplots = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: axes.append(subplots(*a, **k)) or axes[-1])
    out = roc_figure({"toy": (m["fpr"], m["tpr"], m["auc"])}, tmp_path / "roc.png", "toy")
    (line,) = [ln for ln in axes[0][1].lines if ln.get_label().startswith("toy")]
    assert line.get_label() == f"toy (AUC {m['auc']:.2f})" and line.get_drawstyle() == "steps-post"
    np.testing.assert_allclose(line.get_xdata(), np.clip(m["fpr"], 1e-3, 1))
    np.testing.assert_allclose(line.get_ydata(), np.clip(m["tpr"], 1e-3, 1))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- toy overfit regressors

def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear signal plus large irreducible noise: only memorisation fits the noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen)
    w = torch.linspace(-1, 1, D)
    return x, x @ w + 2.0 * torch.randn(n, generator=gen)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 64), nn.Tanh(), nn.Linear(64, 1), nn.Flatten(0))


def fit(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int = 300) -> nn.Module:
    model = mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def predictor(model: nn.Module):
    return lambda x: model(x).detach()


def train_fn(x: torch.Tensor, y: torch.Tensor, seed: int):
    return predictor(fit(x, y, seed, steps=150))


@pytest.fixture(scope="module")
def overfit() -> dict:
    """A target trained on 32 samples: 16 leaked to the attacker, 16 to evaluate; likewise non-members."""
    x, y = toy_data(96, seed=0)
    target = fit(x[:32], y[:32], seed=0)
    return {"model": target, "x": x, "y": y, "eval_x": torch.cat([x[:16], x[32:48]]),
            "eval_y": torch.cat([y[:16], y[32:48]]), "labels": np.r_[np.ones(16), np.zeros(16)],
            "aux": dict(aux_member_x=x[16:32], aux_member_y=y[16:32], aux_non_x=x[48:64], aux_non_y=y[48:64])}


def test_loss_scores_order() -> None:
    x = torch.zeros(3, 1)
    y = torch.tensor([1.0, 0.0, -3.0])
    s = loss_scores(lambda _: torch.zeros(3), x, y)
    assert list(np.argsort(-s)) == [1, 0, 2]
    assert loss_scores(lambda _: torch.zeros(3), x, y, loss="squared")[2] == -9.0


def test_threshold_attack_separates_overfit_model(overfit: dict) -> None:
    scores = threshold_attack(predictor(overfit["model"]), overfit["eval_x"], overfit["eval_y"], **overfit["aux"])
    raw = loss_scores(predictor(overfit["model"]), overfit["eval_x"], overfit["eval_y"])
    assert scores.shape == (32,) and (np.argsort(scores, kind="stable") == np.argsort(raw, kind="stable")).all()
    assert membership_metrics(scores, overfit["labels"])["auc"] > 0.7
    assert ((scores > 0) == overfit["labels"].astype(bool)).mean() > 0.6  # the leaked scans' threshold


def test_threshold_attack_keeps_its_direction_when_the_leak_misleads() -> None:
    """Leaked members that happen to have larger errors than the leaked non-members move the
    threshold, never the direction: a smaller error still scores as more likely a member."""
    zero = lambda q: torch.zeros(len(q))  # noqa: E731
    scores = threshold_attack(zero, torch.zeros(3), torch.tensor([0.1, 1.0, 5.0]),
                              aux_member_x=torch.zeros(2), aux_member_y=torch.tensor([4.0, 6.0]),
                              aux_non_x=torch.zeros(2), aux_non_y=torch.tensor([0.5, 1.0]))
    assert scores[0] > scores[1] > scores[2]


def test_gradient_features_shape_and_model_unchanged(overfit: dict) -> None:
    model = overfit["model"]
    model.train()
    before = copy.deepcopy(model.state_dict())
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    feats = gradient_features(model, nn.functional.mse_loss, overfit["eval_x"], overfit["eval_y"])
    n_tensors = len(list(model.parameters()))
    assert feats.shape == (32, n_tensors + 1) and len(gradient_feature_names(model)) == n_tensors + 1
    assert np.isfinite(feats).all() and (feats >= 0).all()
    assert model.training
    assert all(g is None and p.grad is None or torch.equal(g, p.grad)
               for g, p in zip(grads_before, model.parameters(), strict=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    scores = whitebox_attack(model, nn.functional.mse_loss, overfit["eval_x"], overfit["eval_y"], **overfit["aux"])
    assert membership_metrics(scores, overfit["labels"])["auc"] > 0.7
    ref = whitebox_attack(model, nn.functional.mse_loss, overfit["eval_x"], overfit["eval_y"], **overfit["aux"],
                          population=(overfit["x"][64:], overfit["y"][64:]), reference=True)
    assert ref.shape == (32,) and membership_metrics(ref, overfit["labels"])["auc"] > 0.7
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_monotone_logistic_never_turns_a_feature_round() -> None:
    """Column 0 carries the signal, column 1 is anti-correlated noise a free fit would use, column 2
    is free (unconstrained). Weights on constrained columns stay >= 0; the free one may go negative."""
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(40), np.zeros(160)]
    X = np.c_[labels + rng.normal(0, 1, 200), -labels + rng.normal(0, 1, 200), -labels + rng.normal(0, 1, 200)]
    w, b = monotone_logistic(X, labels, C=1.0, free=1)
    assert w[0] > 0.3 and w[1] == 0.0 and w[2] < -0.3 and np.isfinite(b)
    free_fit = LogisticRegression(C=1.0, class_weight="balanced").fit(X[:, :2], labels)
    assert free_fit.coef_[0, 1] < 0  # what the constraint prevents
    w2, _ = monotone_logistic(X[:, :1], labels, C=1.0)
    assert membership_metrics(X[:, :1] @ w2, labels)["auc"] == membership_metrics(X[:, 0], labels)["auc"]


def test_update_alignment_finds_the_batch() -> None:
    """One SGD step on 8 of 16 candidates. Image-sized inputs (256 features): with few inputs, or a
    CNN with global pooling at init, per-sample gradients share a large common direction and the
    cosine separates less well (AUC ~0.7-0.8 measured)."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 256, generator=gen), torch.randn(16, generator=gen)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(256, 32), nn.Tanh(), nn.Linear(32, 1), nn.Flatten(0))
    global_state = copy.deepcopy(model.state_dict())
    client = copy.deepcopy(model)
    opt = torch.optim.SGD(client.parameters(), lr=0.05)
    loss = nn.functional.mse_loss(client(x[:8]), y[:8])
    loss.backward()
    opt.step()
    scores = update_alignment_scores(model, nn.functional.mse_loss, global_state, client.state_dict(), x, y)
    labels = np.r_[np.ones(8), np.zeros(8)]
    assert membership_metrics(scores, labels)["auc"] > 0.8
    scaled = update_alignment_scores(model, nn.functional.mse_loss, global_state, client.state_dict(), x, y, lr=0.05)
    assert (np.argsort(scaled) == np.argsort(scores)).all()
    assert all(torch.equal(global_state[k], v) for k, v in model.state_dict().items())


def test_update_alignment_reference_removes_the_shared_direction() -> None:
    """Targets far from the initial predictions: every gradient is mostly one shared bias direction,
    which the update holds whoever trained; the known non-members' mean gradient removes it."""
    aucs: dict[str, list[float]] = {"none": [], "both": []}
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        x, y = 0.05 * torch.randn(48, 64, generator=gen), 10.0 + 0.1 * torch.randn(48, generator=gen)
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 1), nn.Flatten(0))
        global_state, client = copy.deepcopy(model.state_dict()), copy.deepcopy(model)
        nn.functional.mse_loss(client(x[:8]), y[:8]).backward()
        torch.optim.SGD(client.parameters(), lr=0.01).step()
        for mode in aucs:
            scores = update_alignment_scores(model, nn.functional.mse_loss, global_state, client.state_dict(),
                                             x[:16], y[:16], reference=(x[16:], y[16:]), mode=mode)
            aucs[mode].append(membership_metrics(scores, np.r_[np.ones(8), np.zeros(8)])["auc"])
    assert np.mean(aucs["both"]) > 0.95 and np.mean(aucs["both"]) > np.mean(aucs["none"]) + 0.05, aucs
    with pytest.raises(ValueError, match="mode must be one of"):
        update_alignment_scores(model, nn.functional.mse_loss, global_state, client.state_dict(), x, y, mode="x")


def test_update_loss_drop_finds_the_trained_scans() -> None:
    """20 Adam steps on 8 of 16 candidates (random targets): a trajectory, not one gradient step.
    The drop itself also rewards non-members that merely started with a large loss; the log ratio
    does not (measured mean AUC ~0.79 vs ~0.97 here). The models given are left as they were."""
    aucs: dict[bool, list[float]] = {False: [], True: []}
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(16, 256, generator=gen), torch.randn(16, generator=gen)
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(256, 32), nn.Tanh(), nn.Linear(32, 1), nn.Flatten(0))
        global_state, client = copy.deepcopy(model.state_dict()), copy.deepcopy(model)
        opt = torch.optim.Adam(client.parameters(), lr=1e-3)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.mse_loss(client(x[:8]), y[:8]).backward()
            opt.step()
        for relative in aucs:
            scores = update_loss_drop_scores(model, nn.functional.mse_loss, global_state, client.state_dict(), x, y,
                                             relative=relative)
            aucs[relative].append(membership_metrics(scores, np.r_[np.ones(8), np.zeros(8)])["auc"])
        assert all(torch.equal(global_state[k], v) for k, v in model.state_dict().items())
    assert np.mean(aucs[False]) > 0.7 and np.mean(aucs[True]) > 0.9, aucs
    # no change, no signal: identical models give zero drop for every scan
    assert np.allclose(update_loss_drop_scores(model, nn.functional.mse_loss, global_state, global_state, x, y), 0)


def test_shadow_and_lira_run(overfit: dict) -> None:
    target = predictor(overfit["model"])
    x, y = overfit["eval_x"], overfit["eval_y"]
    aux_x, aux_y = overfit["x"][64:], overfit["y"][64:]
    shadow = shadow_attack(one_at_a_time(train_fn), target, x, y, aux_x=aux_x, aux_y=aux_y, n_shadows=2)
    offline = lira_scores(one_at_a_time(train_fn), target, x, y, aux_x=aux_x, aux_y=aux_y, n_shadows=4)
    online = lira_scores(one_at_a_time(train_fn), target, x, y, aux_x=aux_x, aux_y=aux_y, n_shadows=4, online=True)
    for scores in (shadow, offline, online):
        assert scores.shape == (32,) and np.isfinite(scores).all()
    assert membership_metrics(online, overfit["labels"])["auc"] > 0.7


def _lookup_model(members: set[int], scale: float, noise: float, seed: int, member_shrink: float = 0.5):
    """Predictions for rows x = (difficulty d, id): error scale * d (times `member_shrink` for
    `members`) plus noise."""
    gen = torch.Generator().manual_seed(seed)

    def predict(x: torch.Tensor) -> torch.Tensor:
        shrink = torch.tensor([member_shrink if int(i) in members else 1.0 for i in x[:, 1]])
        return scale * x[:, 0] * shrink + noise * torch.randn(len(x), generator=gen)
    return predict


def test_lira_calibration_maps_weak_shadows_onto_the_target() -> None:
    """Shadows err 3x as much as the target (a weaker model from less data): uncalibrated LiRA ranks
    by difficulty; the affine map fitted on known non-members undoes the scale."""
    d = torch.linspace(1.0, 10.0, 120)[torch.randperm(120, generator=torch.Generator().manual_seed(0))]
    x, y = torch.stack([d, torch.arange(120.0)], 1), torch.zeros(120)
    cand, aux = np.arange(60), np.arange(60, 120)
    members = set(range(30)) | set(range(60, 75))  # 30 candidates, 15 leaked
    target = _lookup_model(members, 1.0, 0.05, 0)

    def train_fn(xs: torch.Tensor, ys: torch.Tensor, seed: int):
        return _lookup_model({int(i) for i in xs[:, 1]}, 3.0, 0.05, seed)

    labels, aux_is_member = np.r_[np.ones(30), np.zeros(30)], np.r_[np.ones(15), np.zeros(45)].astype(bool)
    kw = dict(aux_x=x[aux], aux_y=y[aux], n_shadows=4)
    for online in (False, True):
        raw = lira_scores(one_at_a_time(train_fn), target, x[cand], y[cand], online=online, **kw)
        cal = lira_scores(one_at_a_time(train_fn), target, x[cand], y[cand], online=online,
                          aux_is_member=aux_is_member, **kw)
        auc_raw, auc_cal = (membership_metrics(s, labels)["auc"] for s in (raw, cal))
        assert auc_cal > 0.95 and auc_cal > auc_raw + 0.15, (online, auc_raw, auc_cal)


def test_online_lira_calibrates_in_on_the_known_members() -> None:
    """The target memorises its members (error ~ noise) while shadows barely learn theirs: mapped through
    the non-members' map, the shadows' IN means sit far from the target's member errors, and a
    shared spread makes the online score linear in the signed error. The known members' own map and
    spread put IN where the target's members are."""
    gen = torch.Generator().manual_seed(1)
    d = torch.linspace(1.0, 10.0, 120)[torch.randperm(120, generator=gen)] * torch.sign(torch.randn(120, generator=gen))
    x, y = torch.stack([d, torch.arange(120.0)], 1), torch.zeros(120)  # errors of both signs, like ages
    cand, aux = np.arange(60), np.arange(60, 120)
    target = _lookup_model(set(range(30)) | set(range(60, 75)), 1.0, 0.3, 0, member_shrink=0.0)

    def train_fn(xs: torch.Tensor, ys: torch.Tensor, seed: int):  # shadows barely learn their members
        return _lookup_model({int(i) for i in xs[:, 1]}, 3.0, 0.3, seed, member_shrink=0.97)

    aux_is_member = np.r_[np.ones(15), np.zeros(45)].astype(bool)
    scores = lira_scores(one_at_a_time(train_fn), target, x[cand], y[cand], aux_x=x[aux], aux_y=y[aux], n_shadows=4,
                         online=True, aux_is_member=aux_is_member)
    assert membership_metrics(scores, np.r_[np.ones(30), np.zeros(30)])["auc"] > 0.95  # through the OUT map: 0.89


def test_lira_shadows_are_balanced() -> None:
    """Each candidate (online) and each aux row is IN for exactly half the shadows."""
    seen: list[set[int]] = []

    def train_fn(xs: torch.Tensor, ys: torch.Tensor, seed: int):
        seen.append({int(i) for i in xs[:, 1]})
        return lambda q: torch.zeros(len(q))

    x = torch.stack([torch.ones(30), torch.arange(30.0)], 1)
    lira_scores(one_at_a_time(train_fn), lambda q: torch.zeros(len(q)), x[:10], torch.ones(10), aux_x=x[10:],
                aux_y=torch.ones(20), n_shadows=6, online=True)
    assert len(seen) == 6 and all(sum(i in s for s in seen) == 3 for i in range(30))

