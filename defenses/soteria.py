"""Soteria (Sun et al., CVPR 2021, "Soteria: Provable Defense against Privacy Leakage in Federated
Learning from Representation Perspective"): before every local step, score each feature r_f of the
representation the head reads by ||d r_f / d x|| / |r_f| over the batch, and zero the head
weight's gradient for the `prune` fraction of features with the lowest scores — those whose
gradient entries reveal the input most cheaply. The model is unchanged; only what it learns from
each batch (and so what it sends) is edited. One batched backward pass per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from fedsim.scenario import Scenario

MAX_FEATURES = 512  # a d r_f / d x each, every step: a flattened (un-pooled) representation is refused


class SoteriaParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prune: float = Field(0.5, gt=0, lt=1, description="fraction of representation features whose head gradient "
                         "is zeroed (the lowest ||dr/dx|| / |r|)")


@DEFENSES.register("soteria")
class Soteria(Defense):
    """Zero the head-weight gradient of the representation features that leak the input most."""

    Params = SoteriaParams
    once = True

    @classmethod
    def check_scenario(cls, params: SoteriaParams, scenario: Scenario) -> None:
        if scenario.task.model.name not in ("brain_age_cnn",):
            raise ValueError(f"task.model.name: soteria needs a network whose head reads a pooled representation "
                             f"(brain_age_cnn), not '{scenario.task.model.name}'")

    def wrap_training(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *,
                      ctx: ClientRound) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        self._pruned: list[float] = []
        recorder = _LastBatch(loader)
        return model, _MaskedStep(optimizer, lambda: self._mask(model, recorder.x)), recorder

    def _mask(self, model: nn.Module, x: torch.Tensor) -> None:
        import torch

        head = model.head  # type: ignore[attr-defined]
        if head.weight.grad is None:
            return
        seen: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        was_training = model.training
        model.eval()
        try:
            x = x.detach().to(head.weight.device).requires_grad_(True)
            model(x)
        finally:
            handle.remove()
            model.train(was_training)
        r = seen[0].flatten(1)  # (batch, features)
        if r.shape[1] > MAX_FEATURES:
            raise ValueError(f"soteria: the head reads {r.shape[1]} features, more than {MAX_FEATURES}")
        n = r.shape[1]  # all features' d r_f / d x at once: one batched backward (vmap)
        basis = torch.eye(n, dtype=r.dtype, device=r.device)[:, None, :].expand(n, r.shape[0], n)
        (dx,) = torch.autograd.grad(r, x, grad_outputs=basis, is_grads_batched=True)
        scores = (dx.flatten(2).norm(dim=2) / (r.detach().abs().T + 0.1)).mean(1).cpu()  # (features,)
        cut = torch.quantile(scores, self.params.prune)
        keep = (scores >= cut).to(head.weight.grad.dtype)
        shape = [1, -1] + [1] * (head.weight.grad.dim() - 2)
        head.weight.grad.mul_(keep.view(shape).to(head.weight.grad.device))
        self._pruned.append(float(1 - keep.mean()))

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        done = getattr(self, "_pruned", [])
        return {"soteria_pruned": float(sum(done) / len(done)) if done else 0.0}


class _LastBatch:
    """The client's loader, remembering the inputs of the batch being trained on."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.dataset, self.x = loader, loader.dataset, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for xb, yb, ib in self.loader:
            self.x = xb
            yield xb, yb, ib


class _MaskedStep:
    """The client's optimizer; each step first edits the gradient (Soteria's mask)."""

    def __init__(self, optimizer: torch.optim.Optimizer, mask: Any) -> None:
        self.optimizer, self.mask = optimizer, mask

    def step(self, *args: Any, **kwargs: Any) -> Any:
        self.mask()
        return self.optimizer.step(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)
