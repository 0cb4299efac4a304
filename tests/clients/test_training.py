import numpy as np
import torch

from fedsim.scenario import FederationConfig, TaskConfig
from fedsim.tasks.brain_age import BrainAgeTask
from fedsim.training import predict, train_local


def _data(n=16):
    """Spheres whose radius sets the target: learnable, like ventricle size and age."""
    g = torch.Generator().manual_seed(0)
    radius = 2 + 5 * torch.rand(n, generator=g)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij")) - 7.5
    dist = grid.pow(2).sum(0).sqrt()
    x = (dist[None] < radius[:, None, None, None]).float()[:, None] + 0.1 * torch.randn(n, 1, 16, 16, 16, generator=g)
    return x, 20 + 10 * radius


def _task():
    return BrainAgeTask(config=TaskConfig(model={"channels": [4, 8]}), target_mean=55.0, target_std=15.0)


def test_local_training_reduces_training_error():
    x, y = _data()
    task = _task()
    torch.manual_seed(0)
    model = task.build_model()
    before = task.metrics(predict(model, x), y)["mae"]
    cfg = FederationConfig(local_steps=150, batch_size=8, lr=1e-2)
    result = train_local(model, x, y, task=task, config=cfg, rng=np.random.default_rng(0))
    after = task.metrics(predict(model, x), y)["mae"]
    assert result.steps == 150 and result.examples == 16
    assert after < 0.7 * before


def test_epochs_mode_counts_full_batches_and_is_deterministic():
    x, y = _data(10)
    task = _task()
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = task.build_model()
        cfg = FederationConfig(local_epochs=2, batch_size=4)
        result = train_local(model, x, y, task=task, config=cfg, rng=np.random.default_rng(1))
        assert result.steps == 2 * (10 // 4)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_proximal_term_keeps_weights_closer_to_global():
    x, y = _data()
    task = _task()
    drift = {}
    for mu in (0.0, 10.0):
        torch.manual_seed(2)
        model = task.build_model()
        start = [p.detach().clone() for p in model.parameters()]
        cfg = FederationConfig(local_steps=20, batch_size=8, lr=1e-2)
        train_local(model, x, y, task=task, config=cfg, rng=np.random.default_rng(2), proximal_mu=mu)
        drift[mu] = sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start, strict=True))
    assert drift[10.0] < drift[0.0]


def test_divergence_is_a_clear_error_not_silent_nans():
    import pytest

    x, y = _data(8)
    task = _task()
    model = task.build_model()
    cfg = FederationConfig(local_steps=50, batch_size=4, lr=10.0, optimizer="sgd", momentum=0.0)
    with pytest.raises(FloatingPointError, match="lower federation.lr"):
        train_local(model, x, y, task=task, config=cfg, rng=np.random.default_rng(0))


def test_augmentation_trains_on_random_views_seeded_and_leaves_the_data_alone():
    x, y = _data(8)
    x_before = x.clone()
    task = _task()
    seen = []

    class Record:  # a hook that sees what the loop trains on
        def wrap(self, model, optimizer, loader):
            return model, optimizer, loader

        def loss_term(self, batch, prediction, model):
            seen.append(batch.x.clone())

        def after_step(self, step, model, batch):
            pass

    runs = {}
    for name, augment in (("plain", None), ("aug", True), ("again", True)):
        torch.manual_seed(3)
        model = task.build_model()
        seen.clear()
        cfg = FederationConfig(local_steps=3, batch_size=4, augment=augment)
        train_local(model, x, y, task=task, config=cfg, rng=np.random.default_rng(3), hooks=[Record()])
        runs[name] = (torch.cat(seen), model.state_dict())
    assert torch.equal(x, x_before)  # the client's scans are not changed in place
    assert not torch.allclose(runs["aug"][0], runs["plain"][0])  # trained on other views
    assert torch.equal(runs["aug"][0], runs["again"][0])  # the same seed gives the same views
    assert all(torch.equal(runs["aug"][1][k], runs["again"][1][k]) for k in runs["aug"][1])


def test_augmentation_moves_a_label_map_with_its_image():
    from fedsim.augment import BatchAugment
    from fedsim.scenario import AugmentConfig

    labels = (torch.arange(16.0)[None, None, :, None, None] > 9).long().expand(4, 1, 16, 16, 16).contiguous()
    images = labels.float() * 2 - 1 + 0.05 * torch.randn(4, 1, 16, 16, 16)
    views, view_labels = BatchAugment(AugmentConfig(flip=1.0, shift=3.0, intensity=0.0), seed=0)(images, labels)
    assert view_labels.dtype == torch.int64 and set(view_labels.unique().tolist()) <= {0, 1}
    assert not torch.equal(view_labels, labels)  # flipped left-right (and shifted)
    agree = ((views > 0).long() == view_labels).float().mean()
    assert agree > 0.95, float(agree)


def test_augment_accepts_true_false_or_settings():
    from fedsim.loading import validate_scenario
    from fedsim.scenario import ScenarioError

    assert FederationConfig(augment=True).augment.flip == 0.5
    assert FederationConfig(augment=False).augment is None
    assert FederationConfig(augment={"shift": 1}).augment.shift == 1.0
    import pytest
    with pytest.raises(ScenarioError, match="federation.augment.flip"):
        validate_scenario({"name": "x", "federation": {"augment": {"flip": 2}}})


def test_a_fedsgd_gradient_is_taken_on_the_augmented_views_too():
    from fedsim.training import one_batch_gradient

    x, y = _data(8)
    task = _task()
    grads = {}
    for name, augment in (("plain", None), ("aug", FederationConfig(augment=True).augment)):
        torch.manual_seed(4)
        model = task.build_model()
        grads[name], _ = one_batch_gradient(model, x, y, task=task, batch_size=4, rng=np.random.default_rng(4),
                                            augment=augment)
    assert not all(torch.allclose(grads["plain"][k], grads["aug"][k]) for k in grads["plain"])
