"""Learned gradient inversion: a ridge map from what a client sends to its scan, fitted on the
attacker's own scans simulated through the global model (an honest-but-curious server).

Normalisation. With a regression head trained on MSE, a batch-1 gradient is 2(f - y) times the
derivative of the output f with respect to each parameter, and the output bias's entry is 2(f - y)
times that bias's own derivative. Dividing the gradient by its bias entry leaves df/dtheta over
df/dbias: a function of the scan alone, which the attacker computes for any scan of its own at the
same weights, without a label. A one-logit classifier under binary cross-entropy has the same form,
with sigmoid(f) - y for the error. At batch B the same division gives the error-weighted mean of the B
scans' features, so the (linear) map returns the error-weighted mean of their reconstructions.
A FedAvg weight change is replayed on the attacker's own labelled scans (client_steps.py) and
scaled to unit norm, signed by its bias entry (`normalise_update`).

Fit. Features are standardised (those without variance, e.g. conv biases in front of instance
norm, are dropped) and held as float16; the ridge is solved in the dual, through the N x N Gram
matrix built in blocks, so memory grows as N x P / 2 bytes plus a few N x N matrices, never as a
float32 copy of all features. The ridge strength is chosen on auxiliary subjects held out of the fit.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.attacks.gradient_inversion.client_steps import ClientSteps, replay
from fedsim.attacks.gradient_inversion.ridge import BLOCK, RIDGE_GRID, choose_ridge, gram_rows, held_out, rbf

STATS_ROWS = 256  # pairs the feature scales are estimated on
FLOAT16_MAX = 6.0e4
Shown = Callable[[torch.Tensor], torch.Tensor]  # scans -> the images a client trains on
Sent = Callable[[torch.Tensor], torch.Tensor]  # per-scan gradient rows -> what a defense lets leave the client


def _unchanged(scans: torch.Tensor) -> torch.Tensor:
    return scans


def output_bias(model: nn.Module) -> str:
    """Name of the output's bias (a regression head, or a one-logit classifier): the last trainable
    one-element bias."""
    for name, p in reversed(list(model.named_parameters())):
        if p.requires_grad and name.endswith("bias") and p.numel() == 1:
            return name
    raise ValueError("learned_inversion needs a regression head with a bias (one output), e.g. task brain_age")


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def output_gradients(model: nn.Module, x: torch.Tensor, names: Sequence[str], *,
                     chunk: int = 16) -> Iterator[torch.Tensor]:
    """Per scan, d output / d parameters (flattened in `names` order), `chunk` scans at a time, in
    training mode, as the client computes its gradient."""
    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    rest = {n: t.detach() for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in params}

    def output(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**rest, **p}, (xi[None],)).sum()

    per_scan = vmap(grad(output), in_dims=(None, 0), randomness="same")
    was_training = model.training
    model.train()
    try:
        for i in range(0, len(x), chunk):
            g = per_scan(params, x[i:i + chunk])
            yield torch.cat([g[n].flatten(1) for n in names], dim=1).float()
    finally:
        model.train(was_training)


def normalise(flat: torch.Tensor, bias_index: int) -> torch.Tensor:
    """Rows divided by their output-bias entry: the label and the loss's scale cancel."""
    bias = flat[:, bias_index:bias_index + 1]
    if (bias == 0).any():
        raise ValueError("the output bias's gradient is zero: the observation carries no error to divide by")
    return flat / bias


def normalise_update(flat: torch.Tensor, bias_index: int) -> torch.Tensor:
    """Weight changes (rows) to unit norm, signed by their output-bias entry. After several steps
    (or Adam's, whose first steps are sign(gradient) x lr) that entry is no longer the error and may
    cancel to exactly zero in float32; the norm removes the error's scale and the sign its sign."""
    sign = torch.where(flat[:, bias_index:bias_index + 1] < 0, -1.0, 1.0).to(flat.dtype)
    return flat / (flat.norm(dim=1, keepdim=True).clamp_min(1e-30) * sign)


@dataclass(frozen=True)
class Pairs:
    """The attacker's training pairs as a plan over its scans: pair i is `variant[i]` of scan
    `subject[i]` (0 itself, 1 its left-right flip; from 2 on, even variants shift the scan and odd
    ones its flip by one voxel along `axis[i]`, by +1, -1, -1, +1, ... so that no two copies of a
    scan coincide), built a chunk at a time so the augmented scans never sit in memory at once."""

    subject: np.ndarray
    variant: np.ndarray
    axis: np.ndarray

    @classmethod
    def plan(cls, n: int, copies: int, *, spatial: int, seed: int) -> Pairs:
        rng = np.random.default_rng(seed)
        return cls(subject=np.tile(np.arange(n), copies), variant=np.repeat(np.arange(copies), n),
                   axis=rng.integers(0, spatial, size=n * copies))

    @property
    def original(self) -> np.ndarray:
        return self.variant == 0

    def scans(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        out = []
        for s, v, a in zip(self.subject[rows], self.variant[rows], self.axis[rows], strict=True):
            scan = torch.flip(x[s], dims=[1]) if v % 2 else x[s]  # spatial axis 0: left-right (MNI)
            out.append(torch.roll(scan, _shift(int(v)), dims=int(a) + 1) if v >= 2 else scan)
        return torch.stack(out)


def _shift(variant: int) -> int:
    """+1, -1 for variants 2, 3; -1, +1 for 4, 5; then again (each pair draws its own axis)."""
    return (1 if variant % 2 == 0 else -1) * (1 if (variant // 2) % 2 == 1 else -1)


@dataclass
class InversionMap:
    """A fitted map: standardisation, the fit pairs' features and images, and the ridge's factor."""

    keep: torch.Tensor  # bool (P,): features with variance
    center: torch.Tensor  # (P_kept,)
    scale: torch.Tensor  # (P_kept,)
    features: torch.Tensor  # (N, P_kept) float16, standardised
    images: torch.Tensor  # (N, V) float16, centred on `mean`
    mean: torch.Tensor  # (V,) float32
    factor: torch.Tensor  # (N, N) float64: Cholesky factor of Gram + ridge
    shape: tuple[int, ...]  # one scan's (C, *spatial)
    kernel: str  # "linear" or "rbf"
    gamma: float  # rbf: exp(-gamma * squared distance), from the median distance of the fit pairs
    ridge: float  # relative to the kernel matrix's mean diagonal
    val_mse: float  # held-out error at that ridge (per voxel, on a voxel sample)
    seconds: float
    norms: torch.Tensor  # (N,) float64: the fit pairs' squared feature norms / P (for the rbf kernel)
    spread: float  # mean distance of the attacker's scans from their mean image
    max_spread: float  # the largest: no scan lies farther from the mean, so no reconstruction may

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        return ((raw[:, self.keep] - self.center) / self.scale).clamp(-FLOAT16_MAX, FLOAT16_MAX)

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        """Scans (m, C, *spatial) for raw normalised features (m, P)."""
        z = self.standardise(raw).half()
        k = gram_rows(z, self.features).T  # (N, m)
        if self.kernel == "rbf":
            k = rbf(k, self.norms[:, None], (z.float().pow(2).sum(1) / z.shape[1]).double()[None], self.gamma)
        w = torch.cholesky_solve(k, self.factor)  # (N, m)
        out = torch.zeros(raw.shape[0], self.images.shape[1], dtype=torch.float64)
        for i in range(0, len(w), BLOCK):
            out += w[i:i + BLOCK].T @ self.images[i:i + BLOCK].double()
        # an update unlike any the map was fitted on (noised, clipped, pruned) can send the linear map
        # far outside the population; the attacker knows no scan lies there, and pulls it back
        out = out * (self.max_spread / out.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return (out.float() + self.mean).reshape(-1, *self.shape)

    def batch_images(self, raw: torch.Tensor, n: int) -> torch.Tensor:
        """`n` scans for the error-normalised gradient of a batch of `n` (raw: (1, P)).

        At batch 1 the prediction itself. Beyond, the prediction is the batch's reconstructions
        weighted by e_i / sum(e): errors of both signs make it an extrapolation along the dominant
        members' deviations, whose sign is unknown. So both signs are returned, scaled to a typical
        scan's distance from the mean: mean + d, mean - d, ... (each finds a different member
        where the errors have opposite signs)."""
        pred = self.predict(raw)
        if n == 1:
            return pred
        dev = pred.flatten(1) - self.mean
        dev = dev / dev.norm().clamp_min(1e-12) * self.spread
        pair = torch.cat([self.mean + dev, self.mean - dev])
        return pair.repeat((n + 1) // 2, 1)[:n].reshape(n, *self.shape)


def _scan_pairs(model: nn.Module, x: torch.Tensor, pairs: Pairs, names: Sequence[str], bias_index: int,
                chunk: int, shown: Shown, sent: Sent | None,
                loss: tuple[torch.Tensor, Callable] | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """FedSGD: per pair, the error-normalised output gradient (label-free) of what the client would
    train on (`shown(scan)`), and the scan. With `sent`, the batch-1 loss gradient (from the
    attacker's (targets, loss_fn): a defense such as clipping depends on its scale) through `sent`,
    scaled to unit norm."""
    for start in range(0, len(pairs.subject), chunk):
        scans = pairs.scans(x, slice(start, start + chunk))
        trained_on = shown(scans)
        grads = next(output_gradients(model, trained_on, names, chunk=len(scans)))
        if sent is None:
            yield normalise(grads, bias_index), scans.flatten(1)
            continue
        targets, loss_fn = loss  # type: ignore[misc]
        errors = loss_errors(model, trained_on, targets[torch.as_tensor(pairs.subject[start:start + chunk])], loss_fn)
        yield normalise_update(sent(grads * errors[:, None]), bias_index), scans.flatten(1)


def loss_errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """d loss / d output of each scan on its own (batch 1), in training mode as the client computes it."""
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            out = torch.cat([model(xi[None]) for xi in x])
    finally:
        model.train(was_training)
    out.requires_grad_(True)
    total = sum(loss_fn(out[i:i + 1], y[i:i + 1]) for i in range(len(out)))
    return torch.autograd.grad(total, out)[0].detach().float()


def live_entries(model: nn.Module, scans: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Parameters the output depends on at all (bool, flattened): not, e.g., a conv bias in front of
    instance norm, whose gradient is rounding noise that Adam would scale up to a full step."""
    g = next(output_gradients(model, scans[:STATS_ROWS // 8], names, chunk=STATS_ROWS // 8)).abs().amax(0)
    return g > 1e-6 * g.max()


def _replayed_pairs(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    x: torch.Tensor, y: torch.Tensor, pairs: Pairs, held: np.ndarray, plan: ClientSteps,
                    names: Sequence[str], bias_index: int, chunk: int,
                    seed: int, shown: Shown, sent: Sent | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """FedAvg: per pair, a pseudo-client of that scan and `plan.images - 1` others of its side of the
    held-out split; its normalised replayed weight change (through `sent`) and the mean of its scans."""
    rng = np.random.default_rng(seed + 1)
    side = np.isin(pairs.subject, held)
    pools = {True: np.flatnonzero(side), False: np.flatnonzero(~side)}
    per_chunk = max(1, chunk // plan.images)
    live = live_entries(model, x, names)
    for start in range(0, len(pairs.subject), per_chunk):
        leads = np.arange(start, min(start + per_chunk, len(pairs.subject)))
        others = [rng.choice(pools[bool(side[i])], size=plan.images - 1) for i in leads]
        members = np.concatenate([leads[:, None], np.array(others, dtype=int).reshape(len(leads), -1)], axis=1)
        scans = pairs.scans(x, members.ravel()).reshape(*members.shape, *x.shape[1:])
        targets = y[torch.as_tensor(pairs.subject[members])]
        trained_on = shown(scans.flatten(0, 1)).reshape(scans.shape)
        update = replay(model, loss_fn, trained_on, targets, plan, names) * live  # dead entries: constant, dropped
        yield normalise_update(update if sent is None else sent(update), bias_index), scans.flatten(2).mean(1)


def _features(n: int, voxels: int, rows: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised float16 features and centred float16 images of `n` pairs streamed from `rows`,
    with the feature mask, centre and scale and the mean image."""
    images = torch.empty(n, voxels, dtype=torch.float16)
    total = torch.zeros(voxels, dtype=torch.float64)
    pending: list[torch.Tensor] = []
    stored: torch.Tensor | None = None
    keep = center = scale = None
    start = done = 0  # pairs whose images / features are stored
    for raw, target in rows:
        images[start:start + len(target)] = target.half()
        total += target.double().sum(0)
        start += len(target)
        if keep is None:
            pending.append(raw)
            if sum(len(p) for p in pending) < min(STATS_ROWS, n):
                continue
            raw, pending = torch.cat(pending), []
            std = raw.std(0)
            keep = std > 1e-6 * std.max()  # zero up to rounding (conv biases in front of a norm)
            center, scale = raw[:, keep].mean(0), std[keep]
            stored = torch.empty(n, int(keep.sum()), dtype=torch.float16)
        stored[done:done + len(raw)] = ((raw[:, keep] - center) / scale).clamp(-FLOAT16_MAX, FLOAT16_MAX).half()
        done += len(raw)
    mean = (total / n).float()
    for i in range(0, n, BLOCK):
        images[i:i + BLOCK] -= mean.half()
    return stored, keep, center, scale, images, mean


def _spread(scans: torch.Tensor, mean: torch.Tensor) -> tuple[float, float]:
    """Mean and largest distance of the attacker's scans from the mean image."""
    flat = scans.flatten(1)
    d = torch.cat([(flat[i:i + BLOCK] - mean).norm(dim=1) for i in range(0, len(flat), BLOCK)])
    return float(d.mean()), float(d.max())


def fit_inversion(model: nn.Module, scans: torch.Tensor, *, targets: torch.Tensor | None = None,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  plan: ClientSteps | None = None, augment_copies: int = 2, val_fraction: float = 0.15,
                  ridge: float | None = None, kernel: str = "linear", chunk: int = 16, seed: int = 0,
                  shown: Shown | None = None, sent: Sent | None = None,
                  subjects: int | None = None) -> InversionMap:
    """Fit the map on the attacker's `scans` (N, C, *spatial) through `model` at its current weights:
    on their FedSGD gradients (the default plan), or on pseudo-clients replaying `plan`'s weight update
    (which needs the scans' `targets` and the task's `loss_fn`). `shown` maps scans to what a client
    trains on (an adaptive attacker's copy of a defense that transforms the images): the map then
    goes from updates computed on those to the real scans. `sent` maps gradients or weight changes
    (rows) to what a defense on the update sends (an attacker that knows it: noise, pruning,
    clipping); FedSGD rows are then the scans' loss gradients (which needs `targets` and `loss_fn`:
    clipping depends on their scale) scaled to unit norm, as `observed_features(..., unit_norm=True)`
    must scale the observations, since a noised or pruned bias entry is no error to divide by. `subjects`: the scans
    are that many people's, several views of each (scan i shows person i % subjects, e.g. neighbouring
    slices); the ridge is then chosen on people held out with all their views."""
    shown = shown or _unchanged
    start = time.perf_counter()
    plan = plan or ClientSteps(gradient=True)
    names = trainable_names(model)
    bias_index = sum(dict(model.named_parameters())[n].numel() for n in names[:names.index(output_bias(model))])
    pairs = Pairs.plan(len(scans), augment_copies, spatial=scans.dim() - 2, seed=seed)
    rng = np.random.default_rng(seed)
    held = held_out(len(scans), subjects or len(scans), val_fraction, rng)
    if plan.gradient:
        if sent is not None and (targets is None or loss_fn is None):
            raise ValueError("fitting through a defense on the update needs the attacker's targets and the task's loss")
        rows = _scan_pairs(model, scans, pairs, names, bias_index, chunk, shown, sent,
                           (targets, loss_fn) if sent is not None else None)
    else:
        if targets is None or loss_fn is None:
            raise ValueError("replaying a weight update needs the attacker's targets and the task's loss")
        rows = _replayed_pairs(model, loss_fn, scans, targets, pairs, held, plan, names, bias_index, chunk, seed,
                               shown, sent)
    features, keep, center, scale, images, mean = _features(len(pairs.subject), int(np.prod(scans.shape[1:])), rows)
    subject, original = pairs.subject, pairs.original
    gram = gram_rows(features, features)
    norms = gram.diagonal().clone()
    gamma = 0.0
    if kernel == "rbf":  # exp(-d^2 / median d^2): the kernel's width from the pairs themselves
        gamma = 1.0 / float((norms[:, None] + norms[None] - 2 * gram).clamp_min(0).median())
        gram = rbf(gram, norms[:, None], norms[None], gamma)
    if ridge is None:
        first_views = subject < (subjects or len(scans))  # e.g. central slices: what clients train on
        val = np.flatnonzero(np.isin(subject, held) & original & first_views)
        fit = np.flatnonzero(~np.isin(subject, held))
        ridge, val_mse = choose_ridge(gram, images, fit, val, np.flatnonzero(original & first_views), grid=RIDGE_GRID,
                                       seed=seed, image_mean=mean)
    else:
        val_mse = float("nan")
    gram.diagonal().add_(ridge * float(gram.diagonal().mean()))
    factor = torch.linalg.cholesky(gram)
    spread, max_spread = _spread(scans, mean)
    del gram
    return InversionMap(keep=keep, center=center, scale=scale, features=features, images=images, mean=mean,
                        factor=factor, shape=tuple(scans.shape[1:]), kernel=kernel, gamma=gamma, ridge=ridge,
                        val_mse=val_mse, seconds=time.perf_counter() - start, norms=norms,
                        spread=spread, max_spread=max_spread)


def observed_features(update: dict[str, torch.Tensor], names: Sequence[str], bias_name: str, *,
                      global_state: dict[str, torch.Tensor] | None = None, unit_norm: bool = False) -> torch.Tensor:
    """A client's FedSGD gradient (error-normalised; scaled to unit norm with `unit_norm`, for a map
    fitted with `sent`), or its weight change from `global_state` (FedAvg; `normalise_update`), as
    the map's input, flattened in parameter order."""
    flat = torch.cat([(update[n].detach().double() - (global_state[n].double() if global_state else 0.0)).flatten()
                      for n in names])[None]
    bias_index = sum(update[n].numel() for n in names[:names.index(bias_name)])
    if global_state is not None or unit_norm:
        return normalise_update(flat, bias_index).float()
    return normalise(flat, bias_index).float()


def state_digest(state: dict[str, torch.Tensor], salt: str = "") -> str:
    """A key for these weights (and `salt`): what a round's observations share."""
    digest = hashlib.sha1(salt.encode())
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


_LAST: dict[str, InversionMap] = {}  # the last fit, by global weights and settings: a round's targets share it


def fit_cached(model: nn.Module, state: dict[str, torch.Tensor],
               population: Callable[[], tuple[torch.Tensor, torch.Tensor]], *,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None, tag: str = "",
               **settings: object) -> InversionMap:
    """`fit_inversion` at these weights on the attacker's (scans, targets), reused for the next
    observation of the same round and plan. `tag` names what the settings' functions (`shown`,
    `sent`) do, which their repr does not."""
    plain = sorted((k, v) for k, v in settings.items() if not callable(v))
    key = state_digest(state, repr((tag, plain)))
    if key not in _LAST:
        _LAST.clear()  # one fit in memory at a time
        scans, targets = population()
        _LAST[key] = fit_inversion(model, scans, targets=targets, loss_fn=loss_fn, **settings)  # type: ignore[arg-type]
    return _LAST[key]
