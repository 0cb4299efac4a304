"""Model perturbation: Gaussian noise on the weights and biases a client sends.

The "label and model perturbation" defense of the gradient-inversion literature adds noise of a fixed
std (e.g. 0.02 or 0.05) to what leaves the client. `sigma0` instead scales the noise to the update:
std = sigma0 * the `percentile`-th percentile of |change|, so one setting fits any model and round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

if TYPE_CHECKING:
    from fedsim.defenses.update_ops import Tensors


class ModelNoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: float | None = Field(None, gt=0, description="absolute noise std added to every sent entry")
    sigma0: float | None = Field(None, gt=0, validate_default=True,
                                 description="relative std: sigma0 * percentile(|change|)")
    percentile: float = Field(95.0, gt=0, le=100, description="which percentile of |change| sigma0 scales")

    @field_validator("sigma0")
    @classmethod
    def _exactly_one(cls, sigma0: float | None, info: ValidationInfo) -> float | None:
        if "sigma" in info.data and (info.data["sigma"] is None) == (sigma0 is None):
            raise ValueError("give exactly one of sigma (absolute std) and sigma0 (relative std)")
        return sigma0


def noise_std(params: ModelNoiseParams, change: Tensors) -> float:
    """The std the params ask for, given the client's change (only read in relative mode)."""
    from fedsim.defenses.update_ops import percentile_abs

    if params.sigma is not None:
        return params.sigma
    return params.sigma0 * percentile_abs(change, params.percentile)


@DEFENSES.register("model_noise")
class ModelNoise(Defense):
    """Gaussian noise on the sent weights (or gradient): absolute `sigma` or relative `sigma0`."""

    Params = ModelNoiseParams

    def transform_update(self, update: Tensors, *, kind: str, reference: Tensors, ctx: ClientRound) -> Tensors:
        # For weights the noise lands on the weights themselves (= on the change, since reference is
        # fixed); the relative scale must come from the change, not from the weights' magnitude.
        from fedsim.defenses.update_ops import add_noise, delta, torch_generator

        change = delta(update, reference) if kind == "weights" else update
        std = noise_std(self.params, change)
        self._std = std
        return add_noise(update, std, torch_generator(int(ctx.rng.integers(2**63))))

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        return {"model_noise_std": float(getattr(self, "_std", 0.0))}
