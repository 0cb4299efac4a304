"""Attribute inference: the clinical records, the attacks on crafted queries, one-line refusals, and a
federation on the real diabetes table end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedsim.attacks.attribute_inference.plugins import AttributeClassifier, Fredrikson
from fedsim.attacks.attribute_inference.query import AttributeQuery, People, attribute_of, binary_logit_likelihood
from fedsim.data.clinical import diabetes, synthetic_clinical
from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import tiny_scenario

TABULAR = {"data": {"dataset": "diabetes", "partition": {"by": "iid"}},
           "task": {"name": "clinical", "model": {"name": "mlp", "channels": [16], "norm": "none"}},
           "server": {"capture": False}}


def test_the_diabetes_table_is_scikit_learns_in_its_own_units():
    records = diabetes()
    assert len(records) == 442 and set(records.categories["sex"]) == {"sex 1", "sex 2"}
    assert set(np.unique(records.columns["sex"])) == {0.0, 1.0}
    assert 19 <= records.columns["age"].min() and records.columns["age"].max() <= 79  # years, not scaled
    assert records.columns["progression_high"].mean() == pytest.approx(0.5, abs=0.01)
    x = records.encode(["age", "sex", "bmi"], [0, 1, 2])
    assert x.shape == (3, 4) and set(np.unique(x[:, 1:3])) <= {0.0, 1.0}  # sex one-hot


def test_the_tables_without_scans_are_the_ones_the_scenario_knows():
    from fedsim.data.datasets import DATASETS
    from fedsim.scenario import TABLE_DATASETS

    assert {n for n in DATASETS.registered() if not DATASETS.get(n).scans} == set(TABLE_DATASETS)


def test_the_synthetic_records_have_the_literatures_correlations():
    rng = np.random.default_rng(0)
    n = 2000
    age, sex = rng.uniform(20, 90, n).astype(np.float32), rng.integers(0, 2, n).astype(np.int8)
    labels = np.ones((n, 4, 4, 4), np.uint8)
    labels[:, 0] = 2
    records = synthetic_clinical(age=age, sex=sex, site=np.zeros(n, np.int16), site_names=["a"], labels=labels,
                                 diagnosis=(rng.random(n) < 0.2).astype(np.int8), seed=0)
    c = records.columns
    assert np.corrcoef(c["age"], c["systolic_bp"])[0, 1] > 0.4  # about 0.5 mmHg a year
    assert c["systolic_bp"][c["sex"] == 1].mean() > c["systolic_bp"][c["sex"] == 0].mean() + 3
    assert c["mmse"][c["diagnosis"] == 1].mean() < c["mmse"][c["diagnosis"] == 0].mean() - 3
    assert np.array_equal(c["hypertension"], (c["systolic_bp"] >= 140).astype(float))
    again = synthetic_clinical(age=age, sex=sex, site=np.zeros(n, np.int16), site_names=["a"], labels=labels,
                               diagnosis=None, seed=0)
    assert "diagnosis" not in again.columns and np.array_equal(again.columns["bmi"], c["bmi"])  # deterministic


def _people(outputs: dict, labels: np.ndarray, known: np.ndarray, truth: np.ndarray | None = None) -> People:
    return People(known=known, labels=labels, outputs=lambda c: outputs[c], truth=truth)


def test_fredrikson_takes_the_value_under_which_the_known_label_is_likeliest_times_the_prior():
    labels = np.array([1.0, 1.0, 0.0])
    outputs = {0: np.array([[2.0], [-2.0], [0.0]]), 1: np.array([[-2.0], [2.0], [0.1]])}  # logits per candidate
    query = AttributeQuery(attribute="sex", candidates=["f", "m"], prior=np.array([0.5, 0.5]), in_input=True,
                           likelihood=binary_logit_likelihood, targets=_people(outputs, labels, np.zeros((3, 0))),
                           auxiliary=_people(outputs, labels, np.zeros((3, 0))))
    scores = Fredrikson().infer(query)
    assert scores.argmax(1).tolist() == [0, 1, 0] and np.allclose(scores.sum(1), 1)
    skewed = AttributeQuery(**{**query.__dict__, "prior": np.array([0.2, 0.8])})
    assert Fredrikson().infer(skewed).argmax(1).tolist() == [0, 1, 1]  # the prior decides the near tie
    label_only = Fredrikson(label_only=True, prior="none").infer(query)
    assert label_only.argmax(1).tolist() == [0, 1, 0]


def test_the_learned_attack_reads_what_the_outputs_give_away():
    rng = np.random.default_rng(1)
    truth_aux, truth = rng.integers(0, 2, 300), rng.integers(0, 2, 200)

    def group(t: np.ndarray, with_truth: bool) -> People:
        out = (2.0 * t - 1 + 0.3 * rng.standard_normal(len(t)))[:, None]  # the model's output tracks the attribute
        return People(known=rng.standard_normal((len(t), 2)), labels=rng.integers(0, 2, len(t)).astype(float),
                      outputs=lambda c, out=out: out, truth=t if with_truth else None)

    query = AttributeQuery(attribute="a", candidates=["0", "1"], prior=np.array([0.5, 0.5]), in_input=False,
                           likelihood=None, targets=group(truth, False), auxiliary=group(truth_aux, True))
    assert (AttributeClassifier().infer(query).argmax(1) == truth).mean() > 0.95


def test_an_attacker_with_few_records_merges_the_empty_bins():
    attribute = attribute_of(diabetes(), "bmi", list(range(8)), bins=20)
    assert 2 <= len(attribute.names) <= 8 and np.isfinite(attribute.fill).all()
    assert np.bincount(attribute.index(diabetes().columns["bmi"][:8])).min() >= 1


def test_a_model_that_learned_an_interaction_leaks_what_the_other_attributes_cannot_tell():
    """y = a XOR (b > 0): knowing b and y, a is hidden to any linear guess from them, but a model of y
    that reads a gives it away exactly through Fredrikson's enumeration; the targets' true a never
    reaches the attacker (no truth, no output on the recorded input)."""
    from types import SimpleNamespace

    import torch

    from fedsim.attacks.attribute_inference.family import score
    from fedsim.attacks.attribute_inference.plugins import ClassifierParams, fit_scores
    from fedsim.attacks.attribute_inference.query import people
    from fedsim.data.clinical import Records
    from fedsim.models.mlp import RecordMLP

    rng = np.random.default_rng(0)
    n = 600
    a, b = rng.integers(0, 2, n).astype(float), rng.standard_normal(n)
    y = np.logical_xor(a > 0.5, b > 0).astype(float)
    records = Records(columns={"a": a, "b": b, "y": y}, categories={"a": ["0", "1"], "y": ["no", "yes"]},
                      scale={"b": (0.0, 1.0)})
    cohort = SimpleNamespace(records=records)
    task = SimpleNamespace(features=["a", "b"], target="y", config=None, target_values=lambda _c, _cfg: y)
    torch.manual_seed(0)
    model = RecordMLP(in_features=3, channels=[32, 32])
    x, target = torch.from_numpy(records.encode(["a", "b"], list(range(n)))), torch.from_numpy(y).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(400):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
        optimizer.step()
    attribute = attribute_of(records, "a", list(range(300)), bins=3)
    kwargs = {"known": ["b", "y"], "attribute": attribute, "white_box": True}
    targets = people(model, task, cohort, list(range(300, n)), truth=False, **kwargs)
    own = people(model, task, cohort, list(range(300)), truth=True, **kwargs)
    assert targets.truth is None and own.truth is not None
    with pytest.raises(PermissionError, match="does not know"):
        targets.outputs(None)
    query = AttributeQuery(attribute="a", candidates=attribute.names, prior=np.array([0.5, 0.5]), in_input=True,
                           likelihood=binary_logit_likelihood, targets=targets, auxiliary=own)
    truth = a[300:].astype(int)
    attack = score(Fredrikson().infer(query), truth, 2)["accuracy"]
    baseline = score(fit_scores(np.c_[b[:300], y[:300]], own.truth, np.c_[b[300:], y[300:]], 2, ClassifierParams(), 0),
                     truth, 2)["accuracy"]
    assert attack > 0.9 and baseline < 0.65, (attack, baseline)
    assert targets.covariates.shape == (300, 1)  # b: the known columns but the label
    assert score(Fredrikson(prior="conditional").infer(query), truth, 2)["accuracy"] > 0.9


def test_the_conditional_prior_keeps_what_the_other_attributes_tell_when_the_model_adds_nothing():
    rng = np.random.default_rng(2)

    def group(n: int) -> tuple[People, np.ndarray]:
        t = rng.integers(0, 2, n)
        covariates = (2.0 * t - 1 + 0.5 * rng.standard_normal(n))[:, None]  # the other columns tell the attribute
        flat = np.zeros((n, 1))  # a model whose output does not depend on it
        return People(known=covariates, covariates=covariates, labels=np.ones(n), outputs=lambda c: flat,
                      truth=t), t

    own, _ = group(300)
    targets, truth = group(200)
    query = AttributeQuery(attribute="a", candidates=["0", "1"], prior=np.array([0.6, 0.4]), in_input=True,
                           likelihood=binary_logit_likelihood, targets=replace(targets, truth=None), auxiliary=own)
    marginal = (Fredrikson().infer(query).argmax(1) == truth).mean()
    conditional = (Fredrikson(prior="conditional").infer(query).argmax(1) == truth).mean()
    assert marginal == (truth == 0).mean() and conditional > 0.9  # the marginal prior alone: always the majority


def test_a_numeric_attribute_is_guessed_as_a_quantile_bin_of_the_attackers_records():
    records = diabetes()
    attribute = attribute_of(records, "bmi", list(range(100)), bins=3)
    assert len(attribute.names) == 3 and attribute.edges is not None and len(attribute.edges) == 2
    index = attribute.index(records.columns["bmi"][:100])
    assert np.bincount(index).min() >= 30  # tertiles of the attacker's own 100
    assert all(attribute.index(np.array([v]))[0] == b for b, v in enumerate(attribute.fill))  # medians in their bin


@pytest.mark.parametrize(("changes", "match"), [
    ({"attribute_inference": {"attribute": "eye_colour"}}, r"attribute_inference.attribute: 'eye_colour' is not in"),
    ({"attribute_inference": {"attribute": "sex", "known": ["bmi", "sex"]}},
     r"attribute_inference.known: 'sex' is \(or restates\) the sensitive attribute"),
    ({"attribute_inference": {"attribute": "sex", "known": ["bmi"]}},
     r"attribute_inference.known: the attacker must know the model's other inputs"),
    ({"attribute_inference": {"attribute": "progression_high"}}, r"is \(or is restated by\) the task's label"),
    ({"defenses": [{"name": "label_noise", "params": {"p": 1.0}}]}, r"defenses.0: .*p"),
    ({"task": {"name": "clinical", "model": {"name": "mlp"}, "target": "bmi"}},
     r"task.target: 'bmi' is not a two-valued column"),
    ({"task": {"name": "brain_age"}}, r"task.name: dataset 'diabetes' is a table of clinical records without scans"),
    ({"attribute_inference": {"attribute": "progression"}, "attacks": [{"name": "attribute_classifier"}]},
     r"'progression' is \(or is restated by\) the task's label 'progression_high'"),
    ({"data": {"dataset": "diabetes", "partition": {"by": "site"}}}, r"data.partition.by: dataset 'diabetes' has no "
     "sites"),
])
def test_bad_attribute_inference_input_is_one_line_naming_the_key(changes, match):
    raw = tiny_scenario(**TABULAR, attacks=[{"name": "fredrikson"}], attribute_inference={"attribute": "sex"})
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key not in ("task", "data") else value
    with pytest.raises(ScenarioError, match=match) as err:
        validate_scenario(raw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("task", "attribute"), [("brain_age", "age"), ("sex_classification", "sex")])
def test_an_imaging_models_own_label_is_not_a_sensitive_attribute(task, attribute):
    raw = tiny_scenario(task={"name": task}, attacks=[{"name": "attribute_classifier"}], server={"capture": False},
                        attribute_inference={"attribute": attribute, "known": ["site"]})
    with pytest.raises(ScenarioError, match=f"'{attribute}' is \\(or is restated by\\) the task's label"):
        validate_scenario(raw)


def test_fredrikson_is_refused_on_a_model_that_does_not_read_the_attribute():
    raw = tiny_scenario(attacks=[{"name": "fredrikson"}], attribute_inference={"attribute": "sex"},
                        server={"capture": False})
    with pytest.raises(ScenarioError, match=r"attacks.0: fredrikson fills candidate values of 'sex' .* use "
                                            r"attribute_classifier"):
        validate_scenario(raw)
    with pytest.raises(ScenarioError, match=r"dataset 'synthetic_head_ct' has no clinical records"):
        validate_scenario(tiny_scenario(attacks=[{"name": "attribute_classifier"}], server={"capture": False},
                                        data={"dataset": "synthetic_head_ct"}))


@pytest.mark.e2e
def test_a_federation_on_the_diabetes_table_is_attacked_beside_the_no_model_baseline(tmp_path: Path):
    raw = tiny_scenario(**TABULAR, attribute_inference={"attribute": "sex", "records": 60},
                        federation={"clients": 2, "rounds": 2, "local_epochs": 2, "batch_size": 16, "lr": 0.01,
                                    "local_steps": None},
                        defenses=[{"name": "label_noise", "params": {"p": 0.25, "fixed": True}}],
                        attacks=[{"name": "fredrikson"}, {"name": "attribute_classifier_whitebox"}])
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and result.failures == []
    summary = json.loads((result.run_dir / "summary.json").read_text())
    rows = {r["attack"]: r for r in summary["attribute_inference"]}
    for row in rows.values():
        assert row["status"] == "ok" and row["members"] == 60 and row["nonmembers"] > 0
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["auc"] <= 1
        assert row["leakage"] == pytest.approx(row["accuracy"] - row["baseline_accuracy"])
        assert row["baseline_accuracy"] > row["majority_accuracy"]  # the serum measures tell sex apart a little
    assert "architecture" in rows["attribute_classifier_whitebox"]["threat"]
    report = (result.run_dir / "report.md").read_text()
    assert "## Attribute inference" in report and "no-model baseline" in report
