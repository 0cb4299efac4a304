"""Black-box membership inference on a regressor: the attacker sees only the target's predictions.

Three strengths, weakest first: a calibrated loss threshold (Yeom et al. 2018), learned shadow-model
attacks (Shokri et al. 2017), and LiRA (Carlini et al. 2022), which compares each candidate's error
with the errors that models trained without (and, online, with) that candidate make on it, so that
hard-to-fit records are not mistaken for non-members. A `predict_fn` maps inputs to predictions
(tensor or array, shape (N,)); a `train_fn(x, y, seed)` trains a fresh model and returns its
`predict_fn` (the attacker's guess at the target's training recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PredictFn = Callable[[Any], Any]
TrainFn = Callable[[Any, Any, int], PredictFn]

__all__ = ["loss_scores", "lira_scores", "shadow_attack", "threshold_attack"]

MIN_SHADOWS_PER_EXAMPLE_VARIANCE = 16  # below this, per-example variances are too noisy (Carlini et al.)


def _np(values: Any) -> np.ndarray:
    """Predictions / targets as float64 numpy (accepts torch tensors without importing torch)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _signed_error(predict_fn: PredictFn, x: Any, y: Any) -> np.ndarray:
    return _np(predict_fn(x)) - _np(y)


def _take(data: Any, idx: np.ndarray) -> Any:
    """Rows of a tensor or array; indices as the container likes them."""
    if hasattr(data, "detach"):
        import torch

        return data[torch.as_tensor(idx, dtype=torch.long)]
    return np.asarray(data)[idx]


def _cat(a: Any, b: Any) -> Any:
    if hasattr(a, "detach"):
        import torch

        return torch.cat([a, b])
    return np.concatenate([np.asarray(a), np.asarray(b)])


def loss_scores(predict_fn: PredictFn, x: Any, y: Any, loss: str = "abs") -> np.ndarray:
    """Negative per-sample error of the target (abs or squared): members tend to have smaller errors."""
    err = _signed_error(predict_fn, x, y)
    if loss == "abs":
        return -np.abs(err)
    if loss == "squared":
        return -(err**2)
    raise ValueError(f"loss must be 'abs' or 'squared', got {loss!r}")


def threshold_attack(target_predict: PredictFn, x: Any, y: Any, *, aux_member_x: Any, aux_member_y: Any,
                     aux_non_x: Any, aux_non_y: Any) -> np.ndarray:
    """Loss attack calibrated on leaked members / non-members: P(member | error) by 1-D logistic regression.

    Monotone in the error, so its ranking (AUC) is the raw loss attack's; what calibration buys is
    a meaningful 0.5 threshold and the direction learned from data rather than assumed."""
    feats = [loss_scores(target_predict, aux_member_x, aux_member_y), loss_scores(target_predict, aux_non_x, aux_non_y)]
    labels = np.r_[np.ones(len(feats[0])), np.zeros(len(feats[1]))]
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    clf.fit(np.concatenate(feats)[:, None], labels)
    return clf.predict_proba(loss_scores(target_predict, x, y)[:, None])[:, 1]


def _shadow_features(predict_fn: PredictFn, x: Any, y: Any) -> np.ndarray:
    """(abs error, signed error, prediction) per sample."""
    pred = _np(predict_fn(x))
    err = pred - _np(y)
    return np.column_stack([np.abs(err), err, pred])


def shadow_attack(train_fn: TrainFn, target_predict: PredictFn, x: Any, y: Any, *, aux_x: Any, aux_y: Any,
                  n_shadows: int = 4, seed: int = 0, classifier: str = "logistic") -> np.ndarray:
    """Shokri-style attack: shadows trained on random halves of the aux data teach a classifier
    what "in" vs "out" predictions look like; it then scores the target's predictions on (x, y).

    `classifier`: "logistic" (standardised logistic regression; robust at a few hundred rows) or
    "gbdt" (gradient boosting; can use non-linear error/prediction interactions, needs more data)."""
    rng = np.random.default_rng(seed)
    n = len(aux_y)
    feats, labels = [], []
    for s in range(n_shadows):
        inside = np.zeros(n, dtype=bool)
        inside[rng.permutation(n)[: n // 2]] = True
        predict_fn = train_fn(_take(aux_x, np.flatnonzero(inside)), _take(aux_y, np.flatnonzero(inside)),
                              int(rng.integers(2**31)))
        feats.append(_shadow_features(predict_fn, aux_x, aux_y))
        labels.append(inside.astype(int))
    if classifier == "logistic":
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    elif classifier == "gbdt":
        clf = GradientBoostingClassifier(n_estimators=100, max_depth=2, learning_rate=0.05, random_state=seed)
    else:
        raise ValueError(f"classifier must be 'logistic' or 'gbdt', got {classifier!r}")
    clf.fit(np.concatenate(feats), np.concatenate(labels))
    return clf.predict_proba(_shadow_features(target_predict, x, y))[:, 1]


def _gaussian_fit(stats: np.ndarray, mask: np.ndarray, global_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of stats (shadows x examples) over the shadows where mask is True."""
    count = mask.sum(0)
    if (count < 1).any():
        raise ValueError("every candidate needs at least one shadow on each side; use more shadows")
    mean = np.where(mask, stats, 0.0).sum(0) / count
    var = np.where(mask, (stats - mean) ** 2, 0.0).sum(0) / np.maximum(count - 1, 1)
    if global_variance:
        var = np.full_like(var, np.mean(var))
    return mean, np.sqrt(var) + 1e-8


def lira_scores(train_fn: TrainFn, target_predict: PredictFn, x: Any, y: Any, *, aux_x: Any, aux_y: Any,
                n_shadows: int = 8, online: bool = False, seed: int = 0,
                global_variance: bool | None = None) -> np.ndarray:
    """Likelihood-ratio attack (Carlini et al. 2022) adapted to regression; higher = member.

    Offline: shadows train on random halves of the aux data only (never on a candidate); statistic
    = -|error|; score = log of the one-sided Gaussian CDF of the target's statistic under the candidate's OUT fit
    (how unusually small the target's error is for that record). Online: shadows also train on a
    random half of the candidates (pairs of shadows with complementary halves, so each candidate is IN
    for half of them); statistic = signed error, whose IN and OUT laws are closer to Gaussian than
    |error|; score = log N(IN) - log N(OUT).
    `global_variance` (default: when fewer than 16 shadows per side) shares one variance across
    records, which Carlini et al. found better with few shadows."""
    rng = np.random.default_rng(seed)
    n_aux, n_cand = len(aux_y), len(y)
    stats, cand_in = [], []
    for s in range(n_shadows):
        aux_idx = rng.permutation(n_aux)[: n_aux // 2]
        xs, ys = _take(aux_x, aux_idx), _take(aux_y, aux_idx)
        inside = np.zeros(n_cand, dtype=bool)
        if online:  # balanced: shadows come in pairs with complementary candidate halves
            if s % 2 == 0:
                half = rng.permutation(n_cand) < n_cand // 2
            inside = half if s % 2 == 0 else ~half
            if inside.any():
                xs, ys = _cat(xs, _take(x, np.flatnonzero(inside))), _cat(ys, _take(y, np.flatnonzero(inside)))
        predict_fn = train_fn(xs, ys, int(rng.integers(2**31)))
        stats.append(_signed_error(predict_fn, x, y))
        cand_in.append(inside)
    err_s, mask_in = np.stack(stats), np.stack(cand_in)
    target_err = _signed_error(target_predict, x, y)
    if not online:
        glob = n_shadows < MIN_SHADOWS_PER_EXAMPLE_VARIANCE if global_variance is None else global_variance
        mean, std = _gaussian_fit(-np.abs(err_s), np.ones_like(mask_in), glob)
        return norm.logcdf((-np.abs(target_err) - mean) / std)  # log, so confident calls don't tie at 1.0
    per_side = min(mask_in.sum(0).min(), (~mask_in).sum(0).min())
    glob = per_side < MIN_SHADOWS_PER_EXAMPLE_VARIANCE if global_variance is None else global_variance
    mean_in, std_in = _gaussian_fit(err_s, mask_in, glob)
    mean_out, std_out = _gaussian_fit(err_s, ~mask_in, glob)
    return norm.logpdf(target_err, mean_in, std_in) - norm.logpdf(target_err, mean_out, std_out)
