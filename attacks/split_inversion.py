"""Split-inference model inversion (He, Zhang and Lee, ACSAC 2019). White box: the untrusted server
holds the hospital-side layers f1 and the features v = f1(x) a hospital sent, and searches the scan
by regularised maximum likelihood, x* = argmin ||f1(x) - v||^2 / ||v||^2 + tv * TV(x), with Adam
from the population-mean scan (the prior it holds anyway). The deeper the cut, the less of the
scan f1 keeps, and the more the total-variation prior has to fill in. Black box
(`split_inverse_network`): an inverse network trained on query scans and their features. Query-free
(`split_shadow_inversion`): the search on a shadow of f1 trained through the server's layers."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack, ThreatModel
from fedsim.settings.base import ACTIVATIONS

if TYPE_CHECKING:
    import torch
    from torch import nn


class SplitInversionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(500, ge=1, le=100_000)
    lr: float = Field(0.05, gt=0)
    tv: float = Field(0.0, ge=0, description="weight of the total-variation prior (He et al.: larger for deeper "
                      "cuts)")
    start: str = Field("prior", pattern="^(prior|zeros)$", description="prior: the population-mean scan; zeros")


@ATTACKS.register("split_inversion")
class SplitInversion(ReconstructionAttack):
    """Rebuild the scans a hospital sent through the cut from their features (white box)."""

    Params = SplitInversionParams
    consumes: ClassVar[frozenset[str]] = frozenset({ACTIVATIONS})
    # not per-client updates: the features are what one hospital sends itself, no server capture needed
    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, auxiliary=True)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        import torch

        from fedsim.attacks.gradient_inversion.parts import total_variation

        if observation.split is None:
            raise ValueError("the observation does not say where the network was cut")
        target = observation.update["features"].detach()
        first, extra = self.first_layers(observation)
        first.eval()
        for p in first.parameters():
            p.requires_grad_(False)
        shape = (len(target), *(observation.input_shape or ()))
        prior = observation.auxiliary.mean(0, keepdim=True) if observation.auxiliary is not None else None
        start = prior.expand(shape) if self.params.start == "prior" and prior is not None else torch.zeros(shape)
        x = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.params.lr)
        scale = target.pow(2).mean()
        for _ in range(self.params.iterations):
            optimizer.zero_grad(set_to_none=True)
            loss = (first(x) - target).pow(2).mean() / scale
            if self.params.tv:
                loss = loss + self.params.tv * total_variation(x)
            loss.backward()
            optimizer.step()
        images = self.finish(x.detach(), observation)
        return Reconstruction(images=images, extra={"objective": float(loss.detach()), "split": observation.split,
                                                    "iterations": self.params.iterations, **extra})

    def finish(self, images: torch.Tensor, observation: Observation) -> torch.Tensor:
        """The search's result, as the attacker hands it in."""
        return images

    def first_layers(self, observation: Observation) -> tuple[nn.Module, dict]:
        """The layers whose features the search matches: the hospital-side layers the server holds."""
        return observation.model().first(observation.split), {}


class ShadowParams(SplitInversionParams):
    shadow_scans: int = Field(200, ge=8, le=100_000, description="labelled population scans the shadow trains on")
    shadow_epochs: int = Field(10, ge=1, le=10_000)
    shadow_lr: float = Field(1e-3, gt=0)
    seed: int = 0


_SHADOWS: dict[str, nn.Module] = {}  # the last shadow, by server-side weights and settings


@ATTACKS.register("split_shadow_inversion")
class SplitShadowInversion(SplitInversion):
    """Query-free (He et al.): a server without the hospital-side weights (say, a hospital that keeps or
    perturbs its own first layers) trains a shadow of them from a fresh initialisation through its
    frozen server-side layers on labelled scans of the population, then runs the white-box search on
    the shadow. It uses the architecture, the server-side weights and the population's labels, never
    the hospital-side weights."""

    Params = ShadowParams

    def first_layers(self, observation: Observation) -> tuple[nn.Module, dict]:
        import copy

        import torch

        if observation.population is None or observation.loss_fn is None:
            raise ValueError("the shadow needs labelled population scans and the task's loss")
        p, model, split = self.params, observation.model(), observation.split
        cut = len(model.first(split))
        rest = {k: v for k, v in observation.global_state.items() if not k.startswith("features.")
                or int(k.split(".")[1]) >= cut}
        settings = f"{split} {observation.provider_scans} {p.shadow_scans} {p.shadow_epochs} {p.shadow_lr} {p.seed}"
        key = hashlib.sha256(b"".join(v.numpy().tobytes() for v in rest.values()) + settings.encode()).hexdigest()
        if key not in _SHADOWS:
            _SHADOWS.clear()
            trained = observation.provider_scans or 0
            scans, targets = observation.population(trained + p.shadow_scans)
            scans, targets = scans[trained:], targets[trained:]  # beyond the provider's own: unseen people
            torch.manual_seed(p.seed)
            shadow = copy.deepcopy(observation.model_factory().first(split))  # a fresh init, not the hospital's
            model.eval()
            for w in model.parameters():
                w.requires_grad_(False)
            optimizer = torch.optim.Adam(shadow.parameters(), lr=p.shadow_lr)
            gen = torch.Generator().manual_seed(p.seed)
            for _ in range(p.shadow_epochs):
                for rows in torch.randperm(len(scans), generator=gen).split(16):
                    optimizer.zero_grad(set_to_none=True)
                    observation.loss_fn(model.rest(shadow(scans[rows]), after=cut), targets[rows]).backward()
                    optimizer.step()
            _SHADOWS[key] = shadow.eval()
        return _SHADOWS[key], {"shadow_scans": p.shadow_scans}

    def finish(self, images: torch.Tensor, observation: Observation) -> torch.Tensor:
        """A shadow fixes the scan's structure but not its intensity scale (any rescaling of the first
        layers is matched by the layers after them): give each rebuilt scan the population's mean and
        spread of intensities, which the attacker's own scans show."""
        if observation.auxiliary is None:
            return images
        dims = tuple(range(1, images.dim()))
        aux = observation.auxiliary
        mean, std = aux.mean(dim=dims).mean(), aux.std(dim=dims).mean()
        return (images - images.mean(dim=dims, keepdim=True)) / images.std(dim=dims, keepdim=True).clamp_min(1e-8) \
            * std + mean


_FITTED: dict[str, tuple[nn.Module, int]] = {}  # the last inverse network, by first layers and settings


class InverseNetworkParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queries: Literal["training", "population", "noise"] = Field(
        "population", description="what the server feeds the first layers to learn their inverse: the provider's "
        "own training scans, other scans of the same population, or Gaussian noise")
    n: int = Field(400, ge=8, le=100_000, description="query scans")
    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    width: int = Field(32, ge=4, le=512, description="channels of the decoder's convolutions")
    seed: int = 0


@ATTACKS.register("split_inverse_network")
class SplitInverseNetwork(ReconstructionAttack):
    """Black box (He et al.): learn g with g(f1(q)) ~ q on query scans q, then apply g to the features
    a hospital sent. It needs the first layers only as an oracle (query in, features out)."""

    Params = InverseNetworkParams
    consumes: ClassVar[frozenset[str]] = frozenset({ACTIVATIONS})
    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, auxiliary=True)

    @classmethod
    def check_experiment(cls, params: InverseNetworkParams, experiment: Any) -> None:
        """The provider holds only the scans it trained on: more training-set queries than that are not its to make."""
        held = (experiment.scenario.sections.get("split_inference") or {}).get("train_scans")
        if params.queries == "training" and held is not None and params.n > held:
            raise ValueError(f"params.n: queries 'training' asks for {params.n} of the provider's training scans, but "
                             f"it holds {held} (split_inference.train_scans)")

    def reconstruct(self, observation: Observation) -> Reconstruction:
        import torch

        if observation.split is None or observation.population is None:
            raise ValueError("the observation does not say where the network was cut, or holds no population")
        first = observation.model().first(observation.split).eval()
        key = hashlib.sha256(b"".join(v.numpy().tobytes() for v in first.state_dict().values())
                             + f"{observation.split} {self.params.model_dump_json()}".encode()).hexdigest()
        if key not in _FITTED:  # every hospital's features go through the same first layers: fit once
            _FITTED.clear()
            _FITTED[key] = self._fit(first, observation)
        decoder, used = _FITTED[key]
        with torch.no_grad():
            images = decoder(observation.update["features"])
        return Reconstruction(images=images, extra={"split": observation.split, "queries": self.params.queries,
                                                    "query_scans": used})

    def _fit(self, first: nn.Module, observation: Observation) -> tuple[nn.Module, int]:
        import torch

        p = self.params
        queries = self._queries(observation)
        with torch.no_grad():
            features = torch.cat([first(q) for q in queries.split(64)])
        torch.manual_seed(p.seed)
        decoder = inverse_decoder(features.shape[1], queries.shape[1], observation.split, queries.dim() - 2, p.width)
        optimizer = torch.optim.Adam(decoder.parameters(), lr=p.lr)
        gen = torch.Generator().manual_seed(p.seed)
        for _ in range(p.epochs):
            for rows in torch.randperm(len(queries), generator=gen).split(p.batch_size):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(decoder(features[rows]), queries[rows]).backward()
                optimizer.step()
        return decoder.eval(), len(queries)

    def _queries(self, obs: Observation) -> torch.Tensor:
        import torch

        p, trained = self.params, obs.provider_scans or 0
        if p.queries == "training":
            return obs.population(min(p.n, trained) if trained else p.n)[0]
        if p.queries == "population":  # beyond the provider's training scans: the same population, unseen
            return obs.population(trained + p.n)[0][trained:]
        reference = obs.population(min(p.n, 64))[0]
        gen = torch.Generator().manual_seed(p.seed)
        return torch.randn((p.n, *reference.shape[1:]), generator=gen)  # the scans are z-scored


def inverse_decoder(in_channels: int, out_channels: int, split: int, spatial_dims: int, width: int) -> nn.Module:
    """Features at the cut -> scan: one transposed convolution (x2) per pooling before the cut
    (split - 1 of them), between 3x3 convolutions, as He et al.'s inverse networks."""
    from torch import nn

    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
    layers: list[nn.Module] = [conv(in_channels, width, 3, padding=1), nn.ReLU()]
    for _ in range(split - 1):
        layers += [up(width, width, 2, stride=2), nn.ReLU(), conv(width, width, 3, padding=1), nn.ReLU()]
    layers.append(conv(width, out_channels, 3, padding=1))
    return nn.Sequential(*layers)
