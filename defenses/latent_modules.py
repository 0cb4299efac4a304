"""The latent-perturbation defense's private networks and its minimax step.

Encoder and decoder are MONAI's AutoEncoder (2D or 3D through `spatial_dims`); the perturbation
acts on its latent code and is projected into a ball of radius `epsilon` x the code's own norm, so
the budget means the same at every scale. The surrogate attacker is an adaptive one: it sees the
image the client trains on (decoded, perturbed) — the most any gradient inversion can recover from
an update computed on it — and learns to map it back to the real scan, knowing the defense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import AutoEncoder
from torch import nn


def conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def autoencoder(spatial_dims: int, channels: tuple[int, ...]) -> AutoEncoder:
    """Strided-conv encoder to a latent of `channels[-1]` maps at 1 / 2^len(channels) resolution."""
    return AutoEncoder(spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=channels,
                       strides=(2,) * len(channels), num_res_units=0)


class Perturbation(nn.Module):
    """A sample-dependent shift of the latent code, at most `epsilon` x the code's norm."""

    def __init__(self, spatial_dims: int, latent_channels: int, epsilon: float) -> None:
        super().__init__()
        c = conv(spatial_dims)
        self.net = nn.Sequential(c(latent_channels, latent_channels, 3, padding=1), nn.PReLU(),
                                 c(latent_channels, latent_channels, 3, padding=1))
        self.epsilon = epsilon

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        delta = self.net(z)
        budget = self.epsilon * z.flatten(1).norm(dim=1)
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = torch.clamp(budget / norm, max=1.0).view(-1, *([1] * (z.dim() - 1)))
        return z + delta * scale


class Deperturber(nn.Module):
    """The surrogate attacker: the perturbed image plus a learned residual, towards the real scan."""

    def __init__(self, spatial_dims: int, width: int = 16) -> None:
        super().__init__()
        c = conv(spatial_dims)
        self.net = nn.Sequential(c(1, width, 3, padding=1), nn.PReLU(), c(width, width, 3, padding=1), nn.PReLU(),
                                 c(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


@dataclass
class LatentDefense:
    """The client's private modules and their optimizers."""

    coder: AutoEncoder
    perturb: Perturbation
    attacker: Deperturber
    lr: float

    def __post_init__(self) -> None:
        self.perturb_opt = torch.optim.Adam(self.perturb.parameters(), lr=self.lr)
        self.attacker_opt = torch.optim.Adam(self.attacker.parameters(), lr=self.lr)
        self.coder.requires_grad_(False)  # pre-trained, then fixed: only the perturbation moves

    def modules(self) -> dict[str, nn.Module]:
        return {"coder": self.coder, "perturb": self.perturb, "attacker": self.attacker}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.coder.intermediate(self.coder.encode(x))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """What the client trains on: its scans encoded, perturbed and decoded."""
        return self.coder.decode(self.perturb(self.encode(x)))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"perturb_opt": self.perturb_opt, "attacker_opt": self.attacker_opt}

    def state(self) -> dict[str, torch.Tensor]:
        """Weights and optimizer moments as flat tensors (a FedSGD client takes one step a round:
        Adam restarted every round would never leave its first, sign-like step)."""
        out = {f"{name}.{k}": v.detach().cpu().clone() for name, m in self.modules().items()
               for k, v in m.state_dict().items()}
        for name, opt in self.optimizers().items():
            for i, moments in opt.state_dict()["state"].items():
                out.update({f"{name}.{i}.{k}": torch.as_tensor(v).detach().cpu().clone() for k, v in moments.items()})
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, m in self.modules().items():
            m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")})
        for name, opt in self.optimizers().items():
            moments: dict[int, dict[str, torch.Tensor]] = {}
            for key, v in tensors.items():
                if key.startswith(f"{name}."):
                    i, k = key[len(name) + 1:].split(".", 1)
                    moments.setdefault(int(i), {})[k] = v.clone()
            if moments:
                opt.load_state_dict({"state": moments, "param_groups": opt.state_dict()["param_groups"]})


def pretrain_coder(coder: AutoEncoder, x: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                   generator: torch.Generator) -> float:
    """Fit the autoencoder to reproduce `x` (MSE); returns the last epoch's mean loss."""
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    coder.train()
    last = float("nan")
    for _ in range(epochs):
        order, losses = torch.randperm(len(x), generator=generator), []
        for i in range(0, len(x), batch_size):
            xb = x[order[i:i + batch_size]]
            opt.zero_grad()
            loss = nn.functional.mse_loss(coder(xb), xb)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        last = sum(losses) / len(losses)
    coder.eval()
    return last


def minimax_step(defense: LatentDefense, model: nn.Module, task_loss, x: torch.Tensor, y: torch.Tensor, *,
                 privacy_weight: float, consistency: float = 0.0) -> dict[str, float]:
    """One attacker step (learn to undo the perturbation), then one defender step: the task loss of
    the current model on the perturbed images, plus `consistency` x how far its outputs on them
    move from its outputs on the real scans (a model trained on perturbed images must still work
    on real ones), minus `privacy_weight` x the attacker's error against the real scans. Gradients
    are taken for the defense's own modules only: the model's `.grad` (a FedSGD gradient in the
    making) is left as it is."""
    with torch.no_grad():
        shown = defense.images(x)
    attacker_loss = nn.functional.mse_loss(defense.attacker(shown), x)
    grads = torch.autograd.grad(attacker_loss, list(defense.attacker.parameters()))
    _step(defense.attacker_opt, defense.attacker, grads)

    shown = defense.images(x)
    was_training = model.training
    model.eval()  # the defender asks how useful the images are, it does not train the model
    out = model(shown)
    utility = task_loss(out, y)
    drift = nn.functional.mse_loss(out, model(x).detach()) if consistency else torch.zeros(())
    model.train(was_training)
    error = nn.functional.mse_loss(defense.attacker(shown), x)
    params = list(defense.perturb.parameters())
    grads = torch.autograd.grad(utility + consistency * drift - privacy_weight * error, params)
    _step(defense.perturb_opt, defense.perturb, grads)
    return {"surrogate_mse": float(error.detach()), "distortion_mse": float(nn.functional.mse_loss(shown, x).detach()),
            "perturbed_task_loss": float(utility.detach()), "output_drift": float(drift.detach())}


def _step(opt: torch.optim.Optimizer, module: nn.Module, grads: tuple[torch.Tensor, ...]) -> None:
    for p, g in zip(module.parameters(), grads, strict=True):
        p.grad = g
    opt.step()
    opt.zero_grad(set_to_none=True)
