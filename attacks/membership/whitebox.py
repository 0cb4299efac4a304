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
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.preprocessing import StandardScaler
from torch import nn

from fedsim.training import predict

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["gradient_feature_names", "gradient_features", "monotone_logistic", "reference_features",
           "update_alignment_scores", "update_loss_drop_scores", "whitebox_attack"]


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


def _flat_grads(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, P) per-sample gradients, flattened over all trainable tensors, float32 on the CPU."""
    return torch.stack([torch.cat([t.detach().float().flatten().cpu() for t in grads])
                        for _, grads in _per_sample_grads(model, loss_fn, x, y)])


def reference_features(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                       reference: torch.Tensor) -> np.ndarray:
    """Per sample: cosine of its gradient with `reference` (the mean gradient of known non-members)
    and log norm of its gradient minus that reference, shape (N, 2)."""
    g = _flat_grads(model, loss_fn, x, y)
    cos = g @ reference / (g.norm(dim=1) * reference.norm()).clamp_min(1e-30)
    return np.c_[cos.numpy(), np.log((g - reference).norm(dim=1).numpy() + 1e-12)].astype(np.float64)


def monotone_logistic(features: np.ndarray, labels: np.ndarray, *, C: float, free: int = 0) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-regularised (`C`) logistic regression whose weights are >= 0 except on the
    last `free` columns: (weights, intercept). A feature with a known direction (members: smaller
    loss, smaller gradients) can be down-weighted to zero but never turned round."""
    n_feat = features.shape[1]
    weight = np.where(labels == 1, 0.5 / labels.mean(), 0.5 / (1 - labels.mean()))

    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        w, z = p[:n_feat], features @ p[:n_feat] + p[n_feat]
        nll = weight * (np.logaddexp(0, -z) * labels + np.logaddexp(0, z) * (1 - labels))
        dz = weight * (expit(z) - labels)
        return float(nll.sum() + 0.5 / C * w @ w), np.r_[features.T @ dz + w / C, dz.sum()]

    bounds = [(0.0, None)] * (n_feat - free) + [(None, None)] * (free + 1)
    fit = minimize(objective, np.zeros(n_feat + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return fit.x[:n_feat], float(fit.x[n_feat])


def whitebox_attack(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    aux_member_x: torch.Tensor, aux_member_y: torch.Tensor, aux_non_x: torch.Tensor,
                    aux_non_y: torch.Tensor, population: tuple[torch.Tensor, torch.Tensor] | None = None,
                    reference: bool = False, C: float = 0.1) -> np.ndarray:
    """A monotone logistic regression on the negated log loss and per-layer gradient norms, fitted on
    leaked members vs. leaked (+ `population`) non-members; a member score (logit) for (x, y).

    Logs because losses and gradient norms span orders of magnitude. Every weight is >= 0 (members
    sit nearer a minimum: smaller loss and gradients, Nasr et al. 2019) and strongly L2-regularised:
    fitted freely on 10-20 leaked members the classifier turned features round and fell below the
    loss attack it contains (AUC 0.53 ± 0.16 vs 0.66 over 10 splits; monotone 0.64 ± 0.06).
    `reference` adds `reference_features` against the non-members' mean gradient, unconstrained
    (measured: no gain on the brain-age CNNs; kept for comparison)."""
    non_x, non_y = (torch.cat([aux_non_x, population[0]]), torch.cat([aux_non_y, population[1]])) \
        if population is not None and len(population[1]) else (aux_non_x, aux_non_y)
    ref = _flat_grads(model, loss_fn, non_x, non_y).mean(0) if reference else None

    def feats(xs: torch.Tensor, ys: torch.Tensor) -> np.ndarray:
        f = -np.log(gradient_features(model, loss_fn, xs, ys) + 1e-12)
        return np.c_[f, reference_features(model, loss_fn, xs, ys, ref)] if ref is not None else f

    member, non = feats(aux_member_x, aux_member_y), feats(non_x, non_y)
    scaler = StandardScaler().fit(np.concatenate([member, non]))
    weights, intercept = monotone_logistic(scaler.transform(np.concatenate([member, non])),
                                           np.r_[np.ones(len(member)), np.zeros(len(non))], C=C,
                                           free=2 if ref is not None else 0)
    if not weights.any():  # the leaked scans showed nothing: fall back on the premise, the loss alone
        weights[0] = 1.0
    return scaler.transform(feats(x, y)) @ weights + intercept


REFERENCE_MODES = ("none", "centre", "project", "both")


def update_alignment_scores(model: nn.Module, loss_fn: LossFn, global_state: Mapping[str, torch.Tensor],
                            update_state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                            lr: float | None = None, reference: tuple[torch.Tensor, torch.Tensor] | None = None,
                            mode: str = "both") -> np.ndarray:
    """Cosine between each candidate's gradient at the global weights and the client's descent
    direction (global - updated weights); higher = more likely in the client's training data.

    `model` supplies the architecture only (a copy is loaded with `global_state`). With `lr`, the
    score is instead the component of the implied mean gradient (global - updated) / lr along the
    candidate's gradient direction: the same ranking, in gradient units.
    `reference` (known non-members' x, y): their mean gradient stands for the population's, which
    every sample shares and the update contains whatever the client's data; `mode` "centre" subtracts
    it from each candidate's gradient, "project" removes its direction from the update, "both" does both."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"mode must be one of {REFERENCE_MODES}, got {mode!r}")
    probe = copy.deepcopy(model)
    probe.load_state_dict(dict(global_state))
    names = [name for name, _ in _trainable(probe)]
    step = torch.cat([(global_state[n].detach().float() - update_state[n].detach().float()).flatten().cpu()
                      for n in names])
    mean = _flat_grads(probe, loss_fn, *reference).mean(0) if reference is not None and mode != "none" else None
    if mean is not None and mode in ("project", "both"):
        unit = mean / mean.norm().clamp_min(1e-30)
        step = step - (step @ unit) * unit
    step_norm = step.norm().clamp_min(1e-30)
    scores = []
    for _, grads in _per_sample_grads(probe, loss_fn, x, y):
        g = torch.cat([t.detach().float().flatten().cpu() for t in grads])
        if mean is not None and mode in ("centre", "both"):
            g = g - mean
        along = float(g @ step / g.norm().clamp_min(1e-30))
        scores.append(along / lr if lr is not None else along / float(step_norm))
    return np.asarray(scores, dtype=np.float64)


def _per_sample_losses(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Loss of each sample on its own (batched predictions, one loss per row)."""
    pred = predict(model, x)
    return np.asarray([float(loss_fn(pred[i:i + 1], y[i:i + 1])) for i in range(len(x))], dtype=np.float64)


def update_loss_drop_scores(model: nn.Module, loss_fn: LossFn, global_state: Mapping[str, torch.Tensor],
                            update_state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                            relative: bool = False) -> np.ndarray:
    """Loss at the global weights minus loss at the client's updated weights, per candidate: local
    training lowers its own scans' losses most, whatever direction the update took to get there.
    `relative`: log(loss before / loss after) instead, which does not favour scans that merely
    started with a large loss (better when the client fits its scans closely).

    Unlike the first-order `update_alignment_scores` this sees the whole local trajectory (many
    steps, Adam's rescaling). `model` supplies the architecture only; copies load the two states."""
    before, after = copy.deepcopy(model), copy.deepcopy(model)
    before.load_state_dict(dict(global_state))
    after.load_state_dict(dict(update_state))
    b, a = _per_sample_losses(before, loss_fn, x, y), _per_sample_losses(after, loss_fn, x, y)
    return np.log(b + 1e-12) - np.log(a + 1e-12) if relative else b - a
