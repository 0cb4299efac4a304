"""The neurodegeneration diagnosis task: one logit, scored as a classifier, and only where the label exists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError, TaskConfig
from fedsim.tasks.diagnosis import DiagnosisSliceTask, DiagnosisTask
from tests.conftest import tiny_scenario

SICK = {"neurodegeneration": True}


def test_one_logit_starting_at_the_prevalence_and_classifier_metrics():
    task = DiagnosisTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=0.2)
    model = task.build_model()
    assert float(model.head.bias.detach()) == pytest.approx(math.log(0.2 / 0.8))
    assert model(torch.randn(3, 1, 16, 16, 16)).shape == (3,)
    target = torch.tensor([1, 0, 0, 0])
    scores = task.metrics(torch.tensor([2.0, -1.0, 0.5, -3.0]), target)
    assert scores["error_rate"] == 0.25 and scores["balanced_accuracy"] == pytest.approx(5 / 6)
    assert set(task.metrics(torch.tensor([1.0]), torch.tensor([0]))) == set(scores)  # one class: same keys
    assert task.baseline(0.2, target)["error_rate"] == 0.25  # always "no disease"
    assert float(task.loss(torch.zeros(4), target)) == pytest.approx(math.log(2))


def test_the_slice_task_is_2d():
    task = DiagnosisSliceTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=0.3)
    assert task.spatial_dims == 2 and task.build_model()(torch.randn(2, 1, 16, 16)).shape == (2,)


@pytest.mark.parametrize(("data", "match"), [
    ({}, r"task 'diagnosis' needs a diagnosis label: set data.neurodegeneration: true"),
    ({"dataset": "synthetic_head_ct"}, r"dataset 'synthetic_head_ct' has no diagnosis label"),
])
def test_a_cohort_without_the_label_is_a_one_line_error(data, match):
    with pytest.raises(ScenarioError, match=match):
        validate_scenario(tiny_scenario(task={"name": "diagnosis"}, data=data))


def test_label_noise_flips_diagnoses_as_classes():
    validate_scenario(tiny_scenario(task={"name": "diagnosis"}, data=SICK,
                                    defenses=[{"name": "label_noise", "params": {"p": 0.1}}]))
    with pytest.raises(ScenarioError, match="classification task"):
        validate_scenario(tiny_scenario(task={"name": "diagnosis"}, data=SICK,
                                        defenses=[{"name": "label_noise", "params": {"scale": 1}}]))


@pytest.mark.e2e
def test_a_federation_trains_the_2d_diagnosis(tmp_path: Path):
    raw = tiny_scenario(task={"name": "diagnosis_slice"}, data={**SICK, "n_subjects": 40},
                        server={"behaviours": [{"name": "request_gradient"},
                                               {"name": "request_batch_size", "params": {"batch_size": 1}}],
                                "targets": {"clients": [0], "rounds": [1]}},
                        attribute_inference={"attribute": "sex", "known": ["age", "site"], "records": 12,
                                             "auxiliary": 20},
                        attacks=[{"name": "learned_inversion",
                                  "params": {"aux_subjects": 20, "slices": 2, "augment": 1}},
                                 {"name": "attribute_classifier_whitebox"}])
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and result.failures == []
    (attack,) = result.summary["attacks"]  # the attacker fits on 5 axial slices of each of its 20 people
    assert attack["status"] == "ok" and attack["aux_pairs"] == 100 and 0 <= attack["reid_top1"] <= 1
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["primary_metric"] == "error_rate"
    assert {"error_rate", "balanced_accuracy"} <= set(summary["final"])
    assert summary["baseline_predict_mean"]["error_rate"] < 0.5  # the majority: no disease
    (inferred,) = summary["attribute_inference"]  # sex from the slice model's features, age and site
    assert inferred["status"] == "ok" and inferred["members"] == 12 and inferred["candidates"] == 2
    assert 0 <= inferred["accuracy"] <= 1 and inferred["baseline_accuracy"] is not None
