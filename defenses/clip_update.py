"""Client-level differential privacy as in DP-FedAvg (McMahan et al., 2018): clip the client's
change to an L2 norm of `max_norm`, then add Gaussian noise of std `noise_multiplier * max_norm`.

Here the noise is added locally, by each client (local DP on the update); DP-FedAvg proper adds
it once, to the server's sum. Clipping alone (noise_multiplier 0) bounds each client's influence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

if TYPE_CHECKING:
    from fedsim.defenses.update_ops import Tensors


class ClipUpdateParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_norm: float = Field(gt=0, description="L2 bound on the client's whole change")
    noise_multiplier: float = Field(0.0, ge=0, description="noise std in units of max_norm")


def clip_and_noise(change: Tensors, max_norm: float, noise_multiplier: float,
                   generator_seed: int | None) -> tuple[Tensors, float]:
    """clip(change) + N(0, (noise_multiplier * max_norm)^2); returns it and the norm before clipping."""
    from fedsim.defenses.update_ops import add_noise, clip_by_global_norm, torch_generator

    clipped, norm = clip_by_global_norm(change, max_norm)
    if noise_multiplier > 0:
        clipped = add_noise(clipped, noise_multiplier * max_norm, torch_generator(generator_seed))
    return clipped, norm


@DEFENSES.register("clip_update")
class ClipUpdate(Defense):
    """Clip the client's change to `max_norm` (global L2) and add Gaussian noise (DP-FedAvg style)."""

    Params = ClipUpdateParams

    def transform_update(self, update: Tensors, *, kind: str, reference: Tensors, ctx: ClientRound) -> Tensors:
        from fedsim.defenses.update_ops import apply_delta, delta

        p = self.params
        seed = int(ctx.rng.integers(2**63))
        if kind == "gradient":  # the gradient is itself the change
            out, self._norm = clip_and_noise(update, p.max_norm, p.noise_multiplier, seed)
            return out
        change, self._norm = clip_and_noise(delta(update, reference), p.max_norm, p.noise_multiplier, seed)
        return apply_delta(reference, change)

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        norm = float(getattr(self, "_norm", 0.0))
        return {"update_norm": norm, "update_clipped": float(norm > self.params.max_norm)}
