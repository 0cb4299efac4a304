"""An attacker in one file: guess the client's scan as the population scan whose gradient looks most alike.

Use it from a scenario with `attacks: [{name: docs/examples/nearest_gradient_attack.py:NearestGradient}]`
or on a recorded run with `fedsim attack RUN_DIR --attack docs/examples/nearest_gradient_attack.py:NearestGradient`.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks import (
    Observation,
    Reconstruction,
    ReconstructionAttack,
    ThreatModel,
)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_candidates: int = Field(64, ge=1)


class NearestGradient(ReconstructionAttack):
    """For each auxiliary scan, compute the gradient the global model would produce, and return the
    scan whose gradient has the highest |cosine| with the observed one (no label needed)."""

    # Needs: the architecture and the global model (to compute gradients) and population scans.
    threat = ThreatModel(architecture=True, auxiliary=True)
    Params = Params

    def reconstruct(self, observation: Observation) -> Reconstruction:
        if observation.kind != "gradient" or observation.auxiliary is None:
            raise ValueError("needs a one-batch gradient and auxiliary scans")
        model = observation.model()
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        observed = torch.cat([observation.update[n].flatten() for n in names])
        best, best_score = None, -1.0
        for scan in observation.auxiliary[: self.params.max_candidates]:
            model.zero_grad()
            pred = model(scan[None])
            pred.sum().backward()  # the gradient's direction up to the sign of (prediction - age)
            grad = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n in names])
            score = float(torch.nn.functional.cosine_similarity(grad, observed, dim=0).abs())
            if score > best_score:
                best, best_score = scan, score
        n = observation.images_in_update()
        return Reconstruction(images=best[None].repeat(n, *[1] * best.dim()), extra={"best_cosine": best_score})
