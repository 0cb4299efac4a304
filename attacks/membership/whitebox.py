"""White-box membership inference: the attacker holds the parameters, or a client's update.

Per-sample gradients carry more membership signal than the loss alone (Nasr et al. 2019): a trained
model sits near a minimum of its members' losses, so their gradients are small layer by layer. In
federated learning a client's weight change is (minus) a sum of its samples' gradients, so a
candidate whose gradient at the global weights points along that change was probably in the batch.
Nothing here modifies the model it is given: gradients come from torch.autograd.grad (no .grad
fields written), the train/eval mode is restored, and updates are scored on a copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["gradient_feature_names", "gradient_features", "update_alignment_scores", "whitebox_attack"]


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _per_sample_grads(model: nn.Module, loss_fn: LossFn, x: torch.Tensor,
                      y: torch.Tensor) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(loss, gradients per trainable tensor) for each sample, in eval mode (no dropout noise)."""
    params = [p for _, p in _trainable(model)]
    device = params[0].device
    was_training = model.training
    model.eval()
    try:
        for i in range(len(x)):
            xi, yi = x[i:i + 1].to(device), y[i:i + 1].to(device)
            loss = loss_fn(model(xi), yi)
            yield loss.detach(), list(torch.autograd.grad(loss, params))
    finally:
        model.train(was_training)


def gradient_feature_names(model: nn.Module) -> list[str]:
    """Column names of `gradient_features`: the loss, then one gradient norm per trainable tensor."""
    return ["loss"] + [f"grad_norm:{name}" for name, _ in _trainable(model)]


def gradient_features(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-sample loss and per-layer (per trainable tensor, named_parameters order) gradient L2 norms:
    shape (N, L + 1). One backward pass per sample: simple, and fine at MIA evaluation sizes."""
    rows = [[float(loss)] + [float(g.norm()) for g in grads] for loss, grads in _per_sample_grads(model, loss_fn, x, y)]
    return np.asarray(rows, dtype=np.float64)


def whitebox_attack(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    aux_member_x: torch.Tensor, aux_member_y: torch.Tensor, aux_non_x: torch.Tensor,
                    aux_non_y: torch.Tensor) -> np.ndarray:
    """Logistic regression on log gradient features of leaked members / non-members; P(member) for (x, y).

    Logs because losses and gradient norms span orders of magnitude; standardised, L2-regularised
    because the aux sets are small next to the number of layers."""
    def feats(xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
        return np.log(gradient_features(model, loss_fn, xs, ys) + 1e-12)

    member, non = feats(aux_member_x, aux_member_y), feats(aux_non_x, aux_non_y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    clf.fit(np.concatenate([member, non]), np.r_[np.ones(len(member)), np.zeros(len(non))])
    return clf.predict_proba(feats(x, y))[:, 1]


def update_alignment_scores(model: nn.Module, loss_fn: LossFn, global_state: Mapping[str, torch.Tensor],
                            update_state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                            lr: float | None = None) -> np.ndarray:
    """Cosine between each candidate's gradient at the global weights and the client's descent
    direction (global - updated weights); higher = more likely in the client's training data.

    `model` supplies the architecture only (a copy is loaded with `global_state`). With `lr`, the
    score is instead the component of the implied mean gradient (global - updated) / lr along the
    candidate's gradient direction: the same ranking, in gradient units."""
    probe = copy.deepcopy(model)
    probe.load_state_dict(dict(global_state))
    names = [name for name, _ in _trainable(probe)]
    step = torch.cat([(global_state[n].detach().float() - update_state[n].detach().float()).flatten().cpu()
                      for n in names])
    step_norm = step.norm().clamp_min(1e-30)
    scores = []
    for _, grads in _per_sample_grads(probe, loss_fn, x, y):
        g = torch.cat([t.detach().float().flatten().cpu() for t in grads])
        along = float(g @ step / g.norm().clamp_min(1e-30))
        scores.append(along / lr if lr is not None else along / float(step_norm))
    return np.asarray(scores, dtype=np.float64)
