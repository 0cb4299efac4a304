"""The segmentation task (loss, Dice metrics, tensors), its MONAI models, and one federated run."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedsim.data.synthetic import Cohort, CohortSpec, load_cohort
from fedsim.loading import validate_scenario
from fedsim.models.registry import MODELS
from fedsim.runner import run_scenario
from fedsim.scenario import ModelConfig, TaskConfig
from fedsim.tasks import TASKS
from fedsim.tasks.segmentation import SegmentationTask
from tests.conftest import tiny_scenario


def _task(name: str = "unet", channels: tuple[int, ...] = (4, 8, 16), norm: str = "instance") -> SegmentationTask:
    config = TaskConfig(name="segmentation", model=ModelConfig(name=name, channels=list(channels), norm=norm))
    return TASKS.get("segmentation")(config=config, target_mean=0.0)


def _labels(n: int = 2, side: int = 8) -> torch.Tensor:
    """(n, 1, side^3) maps with a cube of CSF, a slab of GM and a slab of WM in a background frame."""
    y = torch.zeros(n, 1, side, side, side, dtype=torch.int64)
    y[:, :, 1:3, 1:7, 1:7] = 1
    y[:, :, 3:5, 1:7, 1:7] = 2
    y[:, :, 5:7, 1:7, 1:7] = 3
    return y


def _logits(labels: torch.Tensor, n_classes: int = 4) -> torch.Tensor:
    """Confident logits that argmax to `labels`."""
    return 10.0 * torch.nn.functional.one_hot(labels[:, 0], n_classes).movedim(-1, 1).float()


def test_perfect_prediction_scores_dice_one():
    task, y = _task(), _labels()
    scores = task.metrics(_logits(y), y)
    assert scores["dice"] == pytest.approx(1.0)
    assert all(scores[f"dice_{c}"] == pytest.approx(1.0) for c in ("csf", "gm", "wm"))
    assert task.primary_metric == "dice" and task.baseline_name == "all background"


def test_all_background_baseline_scores_zero():
    task, y = _task(), _labels()
    scores = task.baseline(0.0, y)
    assert scores["dice"] == 0.0 and scores["dice_csf"] == scores["dice_gm"] == scores["dice_wm"] == 0.0


def test_partly_wrong_prediction_and_absent_class():
    task, y = _task(), _labels()
    wrong = y.clone()
    wrong[wrong == 3] = 2  # white matter called grey: WM Dice 0, GM Dice 2*8/(16+8)
    scores = task.metrics(_logits(wrong), y)
    assert scores["dice_wm"] == 0.0 and scores["dice_csf"] == pytest.approx(1.0)
    assert scores["dice_gm"] == pytest.approx(2 / 3) and scores["dice"] == pytest.approx((1 + 2 / 3) / 3)
    no_csf = y.clone()
    no_csf[no_csf == 1] = 0  # a tissue absent from every case is skipped, not counted as 0
    scores = task.metrics(_logits(no_csf), no_csf)
    assert math.isnan(scores["dice_csf"]) and scores["dice"] == pytest.approx(1.0)


def test_loss_prefers_the_right_answer_and_backpropagates():
    task, y = _task(), _labels()
    good, bad = task.loss(_logits(y), y), task.loss(_logits(torch.zeros_like(y)), y)
    assert float(good) < 0.05 < float(bad)
    pred = torch.zeros(2, 4, 8, 8, 8, requires_grad=True)
    task.loss(pred, y).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_tensors_are_zscored_volumes_and_int64_label_maps():
    cohort = load_cohort(CohortSpec(n_subjects=3, shape=16, n_sites=1, seed=0))
    x, y = _task().tensors(cohort, [0, 2])
    assert x.shape == (2, 1, 16, 16, 16) and x.dtype == torch.float32
    assert y.shape == (2, 1, 16, 16, 16) and y.dtype == torch.int64
    assert abs(float(x[0].mean())) < 1e-4 and float(x[0].std()) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(y[1, 0], torch.from_numpy(cohort.labels[2]).long())
    assert not SegmentationTask.targets(cohort).any()  # harmless mean/std for the runner


def test_the_slice_task_segments_the_central_axial_slice_with_a_2d_unet():
    cohort = load_cohort(CohortSpec(n_subjects=3, shape=16, n_sites=1, seed=0))
    config = TaskConfig(name="segmentation_slice", model=ModelConfig(name="unet", channels=[4, 8], norm="instance"))
    task = TASKS.get("segmentation_slice")(config=config, target_mean=0.0)
    x, y = task.tensors(cohort, [0, 2])
    assert x.shape == (2, 1, 16, 16) and y.shape == (2, 1, 16, 16) and y.dtype == torch.int64
    assert torch.equal(y[1, 0], torch.from_numpy(cohort.labels[2][..., 8]).long())  # the central axial slice
    volume = _task().tensors(cohort, [0])[0][0, 0, ..., 8]
    assert not torch.allclose(x[0, 0], volume)  # z-scored over the slice, not the volume
    torch.manual_seed(0)
    logits = task.build_model()(x)
    assert logits.shape == (2, 4, 16, 16)
    perfect = task.metrics(10.0 * torch.nn.functional.one_hot(y[:, 0], 4).movedim(-1, 1).float(), y)
    assert perfect["dice"] == pytest.approx(1.0) and task.baseline(0.0, y)["dice"] == 0.0


@pytest.mark.parametrize("name,norm", [("unet", "instance"), ("unet", "group"), ("segresnet", "group"),
                                       ("segresnet", "instance")])
def test_models_give_class_logits_per_voxel_and_suit_opacus(name: str, norm: str):
    assert name in MODELS.names()
    torch.manual_seed(0)
    model = _task(name, (4, 8, 16), norm).build_model()
    out = model(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 4, 16, 16, 16)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []  # DP-SGD can wrap it


def test_models_reject_a_single_level():
    with pytest.raises(ValueError, match="at least 2"):
        _task("unet", (8,)).build_model()


@pytest.mark.e2e
def test_federated_segmentation_run_writes_dice_and_report(tmp_path: Path):
    raw = tiny_scenario(data={"dataset": "synthetic_head_ct"},
                        task={"name": "segmentation", "model": {"name": "unet", "channels": [4, 8]}})
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert result.error is None and result.failures == []
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["primary_metric"] == "dice"
    assert 0.0 <= summary["final"]["dice"] <= 1.0 and "dice_gm" in summary["final"]
    assert summary["baseline_predict_mean"]["dice"] == 0.0 and summary["baseline_name"] == "all background"
    report = (result.run_dir / "report.md").read_text()
    assert "test DICE" in report and "baseline: all background" in report and "| 2 |" in report


@dataclass
class _NamedCohort(Cohort):
    """What an on-disk cohort adds for segmentation: its classes' names."""

    label_names: dict[int, str] = field(default_factory=dict)


def test_classes_come_from_an_on_disk_cohorts_label_names():
    labels = np.zeros((2, 8, 8, 8), dtype=np.uint8)
    labels[:, 2:4] = 1
    labels[1, 5:7] = 3
    z = np.zeros(2, dtype=np.float32)
    cohort = _NamedCohort(images=labels.astype(np.float32), labels=labels, age=z, bio_age=z, sex=z.astype(np.int8),
                   site=z.astype(np.int16), site_names=["a"], label_names={0: "background", 1: "Left Atrium"})
    task = _task("unet", (4, 8))
    _, y = task.tensors(cohort, [0, 1])
    assert task.class_names == ("left_atrium", "class_2", "class_3") and task.n_classes == 4
    scores = task.metrics(_logits(y), y)
    assert scores["dice_left_atrium"] == 1.0 and math.isnan(scores["dice_class_2"]) and scores["dice"] == 1.0
    assert task.build_model()(torch.zeros(1, 1, 8, 8, 8)).shape[1] == 4
