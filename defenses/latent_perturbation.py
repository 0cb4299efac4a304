"""Learnable latent perturbation (after arXiv 2503.16542): each hospital trains on its scans encoded,
perturbed in the latent space by a learned, bounded module, and decoded; the perturbation is
trained by minimax against a surrogate attacker inside local training, so that what any inversion
of the client's update recovers (at best the image it trained on) is far from the real scan, while
the task loss keeps the images useful.

The autoencoder is pre-trained on the client's own scans in its first round (a hospital need not
trust, nor the server hold, public data for it) and then fixed; the perturbation and the surrogate
warm up against each other on those scans before the first update leaves, and keep learning
round after round. All three live in the client's private state, never in the update.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from fedsim.scenario import Scenario
    from fedsim.training_plan import Batch

IMAGE_TASKS = ("brain_age", "brain_age_slice", "diagnosis", "diagnosis_slice", "sex_classification")


class LatentPerturbationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(0.5, gt=0, le=10, description="latent budget: |perturbation| <= epsilon x |code| per scan")
    privacy_weight: float = Field(1.0, ge=0, description="defender's weight on the surrogate attacker's error "
                                  "(z-scored voxels) against its task loss")
    consistency: float = Field(1.0, ge=0, description="defender's weight on the model's output moving between the "
                               "perturbed and the real scan (keeps the model useful on real scans)")
    channels: tuple[int, ...] = Field((8, 16), min_length=1, max_length=4,
                                      description="autoencoder widths; each level halves the resolution")
    pretrain_epochs: int = Field(10, ge=1, le=500, description="autoencoder epochs on the client's scans (round 1)")
    warmup_steps: int = Field(100, ge=0, le=100_000, description="minimax steps on the client's scans in round 1, "
                              "before its first update (a FedSGD client takes one step a round)")
    lr: float = Field(1e-3, gt=0, description="Adam step of the perturbation and of the surrogate attacker")


@DEFENSES.register("latent_perturbation")
class LatentPerturbation(Defense):
    """Train on decoded, adversarially perturbed latent codes of the scans (minimax against a
    surrogate that undoes the perturbation); the modules stay on the client."""

    Params = LatentPerturbationParams
    once = True
    changes_images = True

    @classmethod
    def check_scenario(cls, params: LatentPerturbationParams, scenario: Scenario) -> None:
        task = scenario.task.name
        if task not in IMAGE_TASKS:
            raise ValueError(f"task '{task}': latent_perturbation perturbs whole-image tasks "
                             f"({', '.join(IMAGE_TASKS)}); a voxel-wise target would no longer match the decoded image")
        factor = 2 ** len(params.channels)
        if scenario.data.shape % factor or scenario.data.shape // factor < 2:
            raise ValueError(f"params.channels: {len(params.channels)} levels shrink data.shape {scenario.data.shape} "
                             f"by {factor}, which leaves no latent grid (use fewer levels or a shape divisible by "
                             f"{2 * factor})")

    def wrap_training(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *,
                      ctx: ClientRound) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        import torch

        from fedsim.defenses.latent_modules import (
            Deperturber,
            LatentDefense,
            Perturbation,
            autoencoder,
            minimax_step,
            pretrain_coder,
        )

        start = time.perf_counter()
        device = next(model.parameters()).device
        real = loader.dataset.tensors[0].to(device)  # type: ignore[attr-defined]  # (x, y, rows): its own scans
        dims, p = real.dim() - 2, self.params
        generator = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        with torch.random.fork_rng():
            torch.manual_seed(int(ctx.rng.integers(2**62)) if not ctx.tensors else 0)
            self.defense = LatentDefense(coder=autoencoder(dims, p.channels),
                                         perturb=Perturbation(dims, p.channels[-1], p.epsilon),
                                         attacker=Deperturber(dims), lr=p.lr)
        for module in self.defense.modules().values():
            module.to(device)  # in place: the optimizers keep their parameters
        self._metrics: dict[str, list[float]] = {}
        if ctx.tensors:
            self.defense.load(ctx.tensors)
        else:
            self.defense.coder.requires_grad_(True)
            loss = pretrain_coder(self.defense.coder, real, epochs=p.pretrain_epochs,
                                  batch_size=ctx.config.batch_size, lr=1e-3, generator=generator)
            self.defense.coder.requires_grad_(False)
            ctx.state["autoencoder_mse"] = loss
            targets = loader.dataset.tensors[1].to(device)  # type: ignore[attr-defined]
            size = min(ctx.config.batch_size, len(real))
            for _ in range(p.warmup_steps):
                rows = torch.randint(len(real), (size,), generator=generator).to(device)
                minimax_step(self.defense, model, ctx.task.loss, real[rows], targets[rows],
                             privacy_weight=p.privacy_weight, consistency=p.consistency)
            ctx.tensors.update(self.defense.state())
        self._real, self._seconds = real, time.perf_counter() - start
        return model, optimizer, PerturbedLoader(loader, self.defense)

    def after_step(self, step: int, model: nn.Module, batch: Batch, *, ctx: ClientRound) -> None:
        from fedsim.defenses.latent_modules import minimax_step

        start = time.perf_counter()
        x = self._real[batch.rows].to(batch.x.device)
        scores = minimax_step(self.defense, model, ctx.task.loss, x, batch.y, privacy_weight=self.params.privacy_weight,
                              consistency=self.params.consistency)
        for k, v in scores.items():
            self._metrics.setdefault(k, []).append(v)
        ctx.tensors.clear()
        ctx.tensors.update(self.defense.state())
        self._seconds += time.perf_counter() - start

    def shown(self, x: torch.Tensor) -> torch.Tensor:
        """The images this client trains on for scans `x` (its modules as they stand): what an
        inversion of its update recovers at best, and what an attacker's copy maps back."""
        import torch

        with torch.no_grad():
            return self.defense.images(x)

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        out = {k: float(sum(v) / len(v)) for k, v in getattr(self, "_metrics", {}).items()}
        return {**out, "autoencoder_mse": float(ctx.state.get("autoencoder_mse", float("nan"))),
                "defense_seconds": float(getattr(self, "_seconds", 0.0))}


class PerturbedLoader:
    """The client's loader, its scans replaced by the defense's decoded perturbed images."""

    def __init__(self, loader: DataLoader, defense: object) -> None:
        self.loader, self.defense, self.dataset = loader, defense, loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        import torch

        device = next(self.defense.coder.parameters()).device  # type: ignore[attr-defined]
        for xb, yb, ib in self.loader:
            with torch.no_grad():  # left before the yield: grad mode is global, the step needs it
                shown = self.defense.images(xb.to(device))  # type: ignore[attr-defined]
            yield shown, yb, ib
