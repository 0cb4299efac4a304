import torch

from fedsim.models.brain_age import BrainAgeCNN
from fedsim.scenario import TaskConfig
from fedsim.tasks.brain_age import BrainAgeTask


def test_output_shape_and_initial_bias_is_mean_age():
    model = BrainAgeCNN(channels=[4, 8], out_bias=55.0, out_scale=12.0)
    torch.nn.init.zeros_(model.head.weight)
    out = model(torch.randn(3, 1, 16, 16, 16))
    assert out.shape == (3,)
    assert torch.allclose(out, torch.full((3,), 55.0))


def test_no_batchnorm_and_no_inplace_activations():
    model = BrainAgeCNN(channels=[4, 8, 16], norm="group")
    kinds = {type(m).__name__ for m in model.modules()}
    assert not any("BatchNorm" in k for k in kinds) and "GroupNorm" in kinds
    assert all(not getattr(m, "inplace", False) for m in model.modules())


def test_norm_none_in_the_scenario_builds_a_network_without_norm_layers():
    # `norm: none` used to be dropped on the way to brain_age_cnn, which then built instance norms
    for norm, expected in (("none", set()), ("instance", {"InstanceNorm3d"}), ("group", {"GroupNorm"})):
        task = BrainAgeTask(config=TaskConfig(model={"channels": [4, 8], "norm": norm}), target_mean=50.0)
        kinds = {type(m).__name__ for m in task.build_model().modules()}
        assert {k for k in kinds if "Norm" in k} == expected, norm


def test_2d_variant():
    model = BrainAgeCNN(channels=[4, 8], spatial_dims=2)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2,)


def test_task_metrics_and_baseline():
    task = BrainAgeTask(config=TaskConfig(), target_mean=50.0)
    target = torch.tensor([40.0, 60.0, 70.0])
    assert abs(task.metrics(torch.tensor([42.0, 58.0, 70.0]), target)["mae"] - 4.0 / 3) < 1e-6
    assert abs(task.baseline(50.0, target)["mae"] - 40.0 / 3) < 1e-6


def test_slice_task_feeds_2d_slices_to_a_2d_model():
    import numpy as np

    from fedsim.data.synthetic import Cohort
    from fedsim.tasks.brain_age import BrainAgeSliceTask

    n, s = 3, 16
    images = np.random.default_rng(0).random((n, s, s, s), dtype=np.float32)
    cohort = Cohort(images=images, labels=np.zeros((n, s, s, s), np.uint8), age=np.array([30, 50, 70], np.float32),
                    bio_age=np.zeros(n, np.float32), sex=np.zeros(n, np.int8), site=np.zeros(n, np.int16),
                    site_names=["a"])
    task = BrainAgeSliceTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=50.0, target_std=20.0)
    x, y = task.tensors(cohort, [0, 2])
    assert x.shape == (2, 1, s, s) and y.tolist() == [30.0, 70.0]
    assert torch.allclose(x[1, 0].mean(), torch.tensor(0.0), atol=1e-5)  # each slice z-scored on its own
    assert task.build_model()(x).shape == (2,)


def test_lenet_keeps_spatial_detail_and_starts_at_the_mean():
    from fedsim.models.lenet import LeNet

    for dims, side in ((3, 32), (2, 32), (3, 16)):
        model = LeNet(spatial_dims=dims, out_bias=60.0, out_scale=10.0)
        x = torch.randn(2, 1, *(side,) * dims)
        assert model(x).shape == (2,)
        assert model.head.in_features == 12 * 8**dims  # no global pooling: an 8^d grid reaches the head
    torch.nn.init.zeros_(model.head.weight)
    assert torch.allclose(model(torch.randn(1, 1, 16, 16, 16)), torch.tensor([60.0]))


def test_lenet_is_selectable_from_the_scenario():
    task = BrainAgeTask(config=TaskConfig(model={"name": "lenet", "channels": [6, 6, 6], "norm": "none"}),
                        target_mean=50.0, target_std=10.0)
    model = task.build_model()
    assert type(model).__name__ == "LeNet" and model.head.in_features == 6 * 8**3


def test_sex_classification_task_scores_logits_and_majority_baseline():
    from fedsim.tasks.sex import SexClassificationTask

    task = SexClassificationTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=0.7, target_std=0.5)
    model = task.build_model()
    logits = model(torch.randn(4, 1, 16, 16, 16))
    assert logits.shape == (4, 2)
    target = torch.tensor([1, 1, 0, 1])
    assert task.metrics(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), target)["error_rate"] == 0.25
    assert task.baseline(0.7, target)["error_rate"] == 0.25  # always "1", the majority
    assert float(task.loss(logits, target).detach()) > 0
