"""Label perturbation: the client trains on (and so leaks) noisy labels.

Classification tasks get randomized response (Warner, 1965; label DP): with probability `p` a label
is replaced by a uniformly drawn *different* class. Regression tasks (brain age, in years) get
additive Gaussian or Laplace noise whose standard deviation is `scale` years.

Labels are perturbed afresh each round: it models a client that re-perturbs before every local
training, so the noise partly averages out over rounds (weaker privacy, better utility). With
`fixed: true` every client draws one perturbation, the first time it trains, and reuses it in later
rounds (the privacy of a one-off release: repeated rounds reveal nothing more about the labels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

if TYPE_CHECKING:
    import torch

    from fedsim.scenario import Scenario

_SEED = "seed"  # key of the fixed perturbation's seed in ctx.state (a float holds integers < 2**53 exactly)


class LabelNoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    p: float | None = Field(None, ge=0, lt=1, description="classification: probability a label is flipped (at 1 "
                            "every label is flipped, which reveals them all)")
    scale: float | None = Field(None, gt=0, description="regression: std of the added noise, in target units")
    distribution: Literal["gaussian", "laplace"] = "gaussian"
    fixed: bool = Field(False, description="one perturbation per client, reused every round")

    @model_validator(mode="after")
    def _one_given(self) -> LabelNoiseParams:
        if self.p is None and self.scale is None:
            raise ValueError("give p (classification flip probability) or scale (regression noise std)")
        return self


def randomized_response(y: torch.Tensor, p: float, n_classes: int, rng: np.random.Generator) -> torch.Tensor:
    """Each label, with probability p, becomes one of the other n_classes - 1 classes uniformly."""
    import torch

    flip = rng.random(y.shape) < p
    shift = rng.integers(1, n_classes, size=y.shape)  # 1..n-1: never back to the same class
    labels = y.cpu().numpy()
    out = np.where(flip, (labels + shift) % n_classes, labels)
    return torch.from_numpy(out.astype(labels.dtype)).to(y.device)


def _n_classes(task: object) -> int | None:
    n = getattr(task, "n_classes", None)
    return int(n) if n is not None else None


@DEFENSES.register("label_noise")
class LabelNoise(Defense):
    """Randomized response (`p`) on class labels, or additive noise (`scale`) on regression targets."""

    Params = LabelNoiseParams

    @classmethod
    def check_scenario(cls, params: LabelNoiseParams, scenario: Scenario) -> None:
        from fedsim.tasks import TASKS

        task = scenario.task.name
        n_classes = _n_classes(TASKS.get(task))
        if n_classes is not None:
            if params.scale is not None:
                raise ValueError(f"params.scale: task '{task}' is a classification task; use params.p "
                                 "(randomized-response flip probability) instead")
            if n_classes < 2:
                raise ValueError(f"task '{task}' has {n_classes} class; randomized response needs two or more")
        elif params.p is not None:
            raise ValueError(f"params.p: task '{task}' is a regression task; use params.scale (noise std) instead")

    def transform_data(self, x: torch.Tensor, y: torch.Tensor, *,
                       ctx: ClientRound) -> tuple[torch.Tensor, torch.Tensor]:
        from fedsim.defenses.update_ops import sample_noise, torch_generator

        rng = ctx.rng
        if self.params.fixed:  # drawn once from this client's first round stream, then kept in its state
            ctx.state.setdefault(_SEED, float(ctx.rng.integers(2**52)))
            rng = np.random.default_rng(int(ctx.state[_SEED]))
        n_classes = _n_classes(ctx.task)
        if n_classes is not None and not y.is_floating_point():
            if self.params.p is None:
                raise ValueError("label_noise: params.p is required for a classification task")
            noisy = randomized_response(y, self.params.p, n_classes, rng)
            self._flipped = float((noisy != y).double().mean()) if y.numel() else 0.0
            return x, noisy
        if self.params.scale is None:
            raise ValueError("label_noise: params.scale is required for a regression task")
        noise = sample_noise(y.shape, self.params.scale, torch_generator(int(rng.integers(2**63))),
                             self.params.distribution, y.dtype)
        return x, y + noise.to(y.device)

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        return {"label_flip_rate": self._flipped} if hasattr(self, "_flipped") else {}
