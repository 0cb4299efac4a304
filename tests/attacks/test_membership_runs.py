"""Membership inference inside a real federation: targets, balanced sets, threat models, bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedsim.attacks.membership.config import MembershipConfig
from fedsim.attacks.membership.evaluation import build_target, membership_sets, null_auc, target_budget
from fedsim.experiment import prepare
from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import tiny_scenario


def _mia(**extra) -> dict:
    return tiny_scenario(
        data={"n_subjects": 40},
        federation={"rounds": 2, "local_steps": 6},
        server={"targets": {"clients": [0], "rounds": [1]}},
        membership={"eval_size": 8, "aux_samples": 4, "targets": ["centralized", "global_model", "client_update"]},
        attacks=[{"name": "mia_loss_threshold"}, {"name": "mia_whitebox"}, {"name": "mia_update_alignment"},
                 {"name": "mia_update_loss_drop"},
                 {"name": "mia_shadow", "params": {"n_shadows": 2}}],
        **extra,
    )


def _memorising() -> dict:
    """_mia() with a model wide enough, and a reference trained long enough, to memorise its scans."""
    raw = _mia()
    raw["data"]["n_subjects"] = 48
    raw["task"] = {"model": {"channels": [16, 32]}}
    raw["federation"].update(local_steps=100, lr=0.003)
    raw["membership"]["eval_size"] = 16
    return raw


@pytest.mark.e2e
def test_membership_attacks_score_every_target(tmp_path: Path):
    result = run_scenario(validate_scenario(_memorising()), out_dir=tmp_path, log=lambda _: None)
    rows = result.summary["membership"]
    by = {(r["target"], r["attack"]): r for r in rows}
    assert {t for t, _ in by} == {"centralized", "global_model", "client_update"}
    for (target, attack), r in by.items():
        if attack in ("mia_update_alignment", "mia_update_loss_drop") and target != "client_update":
            assert r["status"] == "skipped" and "does not apply" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["members"] == r["nonmembers"] == 8 and r["leaked"] == 4 and r["population"] > 0
        assert r["auc"] * 128 == pytest.approx(round(r["auc"] * 128))  # pairs of 8 x 8, ties counting half
    # the centralized reference memorised its scans, and every attack on it sees that beyond what the
    # evaluation set's composition alone gives (the null AUC), on the same age-matched sets
    central = by[("centralized", "mia_loss_threshold")]
    assert central["train_mae"] < 0.5 * central["test_mae"]
    for attack in ("mia_loss_threshold", "mia_whitebox", "mia_shadow"):
        assert by[("centralized", attack)]["auc"] >= by[("centralized", attack)]["null_auc"] + 0.2, attack
    assert "architecture" not in by[("global_model", "mia_loss_threshold")]["threat"]  # black box: no weights
    assert (result.run_dir / "attacks/membership/roc_global_model.png").is_file()
    report = (result.run_dir / "report.md").read_text()
    assert "## Membership inference" in report and "null AUC" in report
    assert "leaked" not in by[("client_update", "mia_update_loss_drop")]["threat"]  # needs no leaked scans
    # the centralized reference is kept, so rescoring the run does not train it again
    scenario = validate_scenario(_memorising())
    saved = load_file(result.run_dir / "centralized.safetensors")
    logs: list[str] = []
    again = build_target("centralized", RunFolder(result.run_dir), prepare(scenario),
                         MembershipConfig(**scenario.sections["membership"]), log=logs.append)
    assert not logs and all(torch.equal(v, saved[k]) for k, v in again.model.state_dict().items())


def test_sets_are_balanced_disjoint_and_deterministic():
    members, nonmembers = list(range(0, 50)), list(range(100, 130))
    a = membership_sets(members, nonmembers, eval_size=20, aux_samples=10, seed=1)
    b = membership_sets(members, nonmembers, eval_size=20, aux_samples=10, seed=1)
    assert a.eval_rows == b.eval_rows and a.aux_members == b.aux_members and (a.is_member == b.is_member).all()
    assert a.is_member.sum() == 10 and (~a.is_member).sum() == 10
    assert not set(a.eval_rows) & set(a.aux_members + a.aux_nonmembers)
    assert set(np.array(a.eval_rows)[a.is_member]) <= set(members) and set(a.aux_nonmembers) <= set(nonmembers)
    # the attacker's population: every non-member left over, never a candidate or a leaked sample
    assert sorted(a.population + a.aux_nonmembers + list(np.array(a.eval_rows)[~a.is_member])) == nonmembers
    assert a.population == b.population
    with pytest.raises(ScenarioError, match="membership.eval_size: 20 non-members to score plus 15 leaked"):
        membership_sets(members, nonmembers, eval_size=40, aux_samples=30, seed=1)


def test_matched_sets_pair_each_non_member_with_a_member_of_nearest_age():
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 90, 300)
    members, nonmembers = list(range(200)), list(range(200, 300))
    a = membership_sets(members, nonmembers, eval_size=40, aux_samples=20, seed=3, match=ages)
    m, o = np.array(a.eval_rows[:20]), np.array(a.eval_rows[20:])
    assert a.is_member[:20].all() and not a.is_member[20:].any() and len(set(m)) == 20
    assert np.abs(ages[m] - ages[o]).max() < 3.0  # 200 members over 70 years: a partner within a few years
    assert not set(a.eval_rows) & set(a.aux_members + a.aux_nonmembers)
    again = membership_sets(members, nonmembers, eval_size=40, aux_samples=20, seed=3, match=ages)
    assert again.eval_rows == a.eval_rows and again.aux_members == a.aux_members
    unmatched = membership_sets(members, nonmembers, eval_size=40, aux_samples=20, seed=3)
    assert unmatched.eval_rows[20:] == a.eval_rows[20:]  # the same non-members; only their partners differ


def test_null_auc_shows_what_the_eval_set_composition_alone_gives():
    """Members far from the mean age, non-members near it: a model that knows nothing scores them
    the wrong way round (AUC 0), which is what an attack's AUC must be read against."""
    ages = np.array([50.0, 50.0, 20.0, 80.0, 49.0, 51.0])
    prep = SimpleNamespace(cohort=None, task=SimpleNamespace(config=None, target_values=lambda _c, _cfg: ages))
    y = torch.tensor([20.0, 80.0, 49.0, 51.0])
    assert null_auc(prep, [0, 1, 2, 3], y, np.array([True, True, False, False])) == {"null_auc": 0.0}
    assert null_auc(prep, [0, 1], torch.zeros(4, 2), np.array([True, True, False, False])) == {}


@pytest.mark.parametrize(("change", "message"), [
    ({"membership": {"aux_samples": 0}}, "attacks.0: mia_loss_threshold needs leaked samples"),
    ({"membership": {"client": 5, "targets": ["client_update"]}}, "membership.client: client 5 does not exist"),
    ({"membership": {"round": 2, "targets": ["client_update"]}}, "the server does not observe client 0 in round 2"),
])
def test_bad_membership_input_is_one_line(change, message):
    raw = _mia()
    raw["membership"] = {**raw["membership"], **change["membership"]}
    with pytest.raises(ScenarioError, match=message):
        validate_scenario(raw)


def test_eval_set_larger_than_the_members_fails_before_training(tmp_path: Path):
    raw = _mia()
    raw["membership"]["eval_size"] = 400
    with pytest.raises(ScenarioError, match="membership.eval_size"):
        run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert not (tmp_path / "tiny").exists() or not any((tmp_path / "tiny").iterdir())


def test_shadow_budget_follows_the_target():
    """Shadows get the target's optimizer steps: every round's local steps for the global model, the
    rounds up to the observed one for a client update, epochs x batches for the centralized reference."""
    prep = SimpleNamespace(split=SimpleNamespace(clients=[SimpleNamespace(train=list(range(40))),
                                                          SimpleNamespace(train=list(range(24)))]))

    def scenario(**federation):
        raw = _mia()
        raw["federation"].update(rounds=3, batch_size=4, **federation)
        raw["server"]["targets"]["rounds"] = [2]
        raw["membership"]["round"] = 2
        sc = validate_scenario(raw)
        return sc, MembershipConfig(**sc.sections["membership"])

    steps, cfg = scenario(local_steps=5)
    assert target_budget(steps, prep, "global_model", cfg) == (15, 15 * 4 / 32)
    assert target_budget(steps, prep, "client_update", cfg) == (10, 10 * 4 / 40)
    epochs, cfg = scenario(local_steps=None, local_epochs=2)
    assert target_budget(epochs, prep, "global_model", cfg)[0] == 3 * 2 * (32 // 4)
    assert target_budget(epochs, prep, "centralized", cfg) == (6 * (64 // 4), 6.0)
    # a server that asked for batches of 1 in the observed round: that round's 2 epochs took a step per scan
    assert target_budget(epochs, prep, "client_update", cfg, batch_size=1) == (2 * 10 + 2 * 40, (20 * 4 + 80) / 40)
