"""Gradient inversion on tiny nets where it must work: a broken objective, simulator or label
handling would leave the reconstruction at noise level (PSNR ~0-10 dB)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedsim.attacks.gradient_inversion.optimize import (
    InversionConfig,
    _update_simulator,
    gradients_of,
    invert_gradient,
    invert_weight_update,
    recover_labels_idlg,
)
from fedsim.attacks.gradient_inversion.parts import (
    PCAImage,
    match_objective,
    total_variation,
)
from fedsim.attacks.metrics import psnr

mse_loss = nn.functional.mse_loss
DLG = InversionConfig(objective="l2", tv=0.0, iterations=300)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny_cnn(out: int = 1) -> nn.Module:
    """A conv layer then a linear head on 8x8 images (Sigmoid: smooth second derivatives, as in DLG)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 64, out))


def sgd_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, bs: int) -> dict:
    """What a client sends after plain local SGD, cycling through its data in order."""
    client = copy.deepcopy(model)
    opt = torch.optim.SGD(client.parameters(), lr=lr)
    for s in range(steps):
        idx = torch.arange(s * bs, (s + 1) * bs) % len(x)
        opt.zero_grad()
        mse_loss(client(x[idx]), y[idx]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in client.state_dict().items()}


def test_dlg_recovers_one_image_with_known_label() -> None:
    model, x, y = tiny_cnn(), torch.randn(1, 1, 8, 8), torch.tensor([[0.7]])
    before = copy.deepcopy(model.state_dict())
    result = invert_gradient(model, mse_loss, gradients_of(model, mse_loss, x, y), input_shape=x.shape,
                             labels=y, config=DLG)
    assert psnr(result.images, x).item() > 25
    assert result.images.shape == x.shape and result.iterations == 300 and result.seconds > 0
    for k, v in model.state_dict().items():  # the attack must not touch the global model
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_cosine_matching_also_recovers() -> None:
    model, x, y = tiny_cnn(), torch.randn(1, 1, 8, 8), torch.tensor([[0.7]])
    config = InversionConfig(objective="cosine", tv=0.0, iterations=300)
    result = invert_gradient(model, mse_loss, gradients_of(model, mse_loss, x, y), input_shape=x.shape,
                             labels=y, config=config)
    assert psnr(result.images, x).item() > 25


def test_joint_label_recovers_regression_target() -> None:
    model, x, y = tiny_cnn(), torch.randn(1, 1, 8, 8), torch.tensor([[0.7]])
    config = InversionConfig(objective="l2", tv=0.0, iterations=300, label="joint")
    result = invert_gradient(model, mse_loss, gradients_of(model, mse_loss, x, y), input_shape=x.shape,
                             config=config)
    assert result.labels is not None
    assert result.labels.item() == pytest.approx(0.7, abs=0.05)
    assert psnr(result.images, x).item() > 20


def test_abs_cosine_needs_no_label() -> None:
    model, x, y = tiny_cnn(), torch.randn(1, 1, 8, 8), torch.tensor([[0.7]])
    config = InversionConfig(objective="abs_cosine", tv=0.0, iterations=300)
    result = invert_gradient(model, mse_loss, gradients_of(model, mse_loss, x, y), input_shape=x.shape,
                             config=config)
    assert result.labels is None
    assert psnr(result.images, x).item() > 20


def test_labels_required_for_signed_objectives() -> None:
    model, x = tiny_cnn(), torch.randn(1, 1, 8, 8)
    grads = gradients_of(model, mse_loss, x, torch.tensor([[0.7]]))
    with pytest.raises(ValueError, match="labels are required"):
        invert_gradient(model, mse_loss, grads, input_shape=x.shape, config=DLG)


def test_idlg_recovers_the_class() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5))
    for label in range(5):
        x = torch.randn(1, 1, 8, 8)
        grads = gradients_of(model, nn.functional.cross_entropy, x, torch.tensor([label]))
        assert recover_labels_idlg(grads[-2]).tolist() == [label]  # [-2]: the final Linear's weight


def test_weight_update_one_step_behaves_like_gradient_inversion() -> None:
    model, x, y = tiny_cnn(), torch.randn(1, 1, 8, 8), torch.tensor([[0.7]])
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    updated = sgd_steps(model, x, y, steps=1, lr=0.1, bs=1)
    result = invert_weight_update(model, mse_loss, global_state, updated, input_shape=x.shape, local_steps=1,
                                  lr=0.1, batch_size=1, labels=y, config=DLG)
    assert psnr(result.images, x).item() > 25
    assert all(torch.equal(v, global_state[k]) for k, v in model.state_dict().items())


def test_weight_update_simulation_is_exact_for_the_true_data() -> None:
    """Cycling mini-batches over several steps: the true data must reproduce the update (objective 0)."""
    model, x, y = tiny_cnn(), torch.randn(3, 1, 8, 8), torch.randn(3, 1)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    updated = sgd_steps(model, x, y, steps=4, lr=0.1, bs=2)
    config = InversionConfig(objective="l2", tv=0.0, iterations=0)
    wrong = invert_weight_update(model, mse_loss, global_state, updated, input_shape=x.shape, local_steps=4,
                                 lr=0.1, batch_size=2, labels=y, config=config)
    assert wrong.objective > 1e-6
    simulate = _update_simulator(model, mse_loss, global_state, local_steps=4, lr=0.1, batch_size=2)
    names = [n for n, _ in model.named_parameters()]
    delta = [updated[n] - global_state[n] for n in names]
    # float32 round-off: its size depends on the CPU's summation order
    assert match_objective(simulate(x, y, False), delta, "l2").item() < 1e-9


def test_pca_parameterisation_starts_at_the_mean_and_spans_the_data() -> None:
    aux = torch.randn(10, 1, 4, 4, 4)
    image = PCAImage(aux, batch=2, n_components=9, start_noise=0.0)
    assert torch.allclose(image(), aux.mean(0, keepdim=True).expand(2, -1, -1, -1, -1), atol=1e-6)
    # 9 components of 10 centred images span them: some coefficients reproduce aux[0] exactly
    coef = torch.linalg.lstsq(image.basis.T, (aux[0].flatten() - image.mean)[:, None]).solution
    assert torch.allclose(image.mean + (image.basis.T @ coef).flatten(), aux[0].flatten(), atol=1e-4)


def test_pca_inversion_runs_in_3d_and_keeps_shape() -> None:
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(2, 1))
    aux, x, y = torch.randn(12, 1, 6, 6, 6), torch.randn(2, 1, 6, 6, 6), torch.randn(2, 1)
    config = InversionConfig(parameterization="pca", n_components=5, iterations=5, restarts=2, prior_pull=1e-3)
    result = invert_gradient(model, mse_loss, gradients_of(model, mse_loss, x, y), input_shape=x.shape,
                             labels=y, auxiliary=aux, config=config)
    assert result.images.shape == x.shape and torch.isfinite(result.images).all()
    assert total_variation(result.images).item() >= 0


def test_verbose_prints_about_ten_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    model, x, y = tiny_cnn(), torch.randn(1, 1, 8, 8), torch.tensor([[0.7]])
    grads = gradients_of(model, mse_loss, x, y)
    invert_gradient(model, mse_loss, grads, input_shape=x.shape, labels=y, config=InversionConfig(iterations=50))
    assert capsys.readouterr().out == ""
    invert_gradient(model, mse_loss, grads, input_shape=x.shape, labels=y, config=InversionConfig(iterations=50),
                    verbose=True)
    assert 10 <= capsys.readouterr().out.count("[inversion]") <= 12
