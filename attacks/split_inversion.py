"""Split-inference model inversion, white box (He, Zhang and Lee, ACSAC 2019): the untrusted server
holds the hospital-side layers f1 and the features v = f1(x) a hospital sent, and searches the scan
by regularised maximum likelihood, x* = argmin ||f1(x) - v||^2 / ||v||^2 + tv * TV(x), with Adam
from the population-mean scan (the prior it holds anyway). The deeper the cut, the less of the
scan f1 keeps, and the more the total-variation prior has to fill in."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack, ThreatModel
from fedsim.settings.base import ACTIVATIONS


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
        first = observation.model().first(observation.split)
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
        return Reconstruction(images=x.detach(), extra={"objective": float(loss.detach()), "split": observation.split,
                                                        "iterations": self.params.iterations})
