"""Update pruning (gradient sparsification): send only the largest-magnitude `keep` fraction of the
client's change and zero the rest, a defense against gradient inversion (Zhu et al., 2019, "Deep
Leakage from Gradients", prune the small gradients) that also cuts communication.

The top-k is global over the whole update, not per tensor: a per-tensor quota would keep the noise
of tensors that barely changed and drop the signal of those that changed most.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from fedsim.defenses.base import DEFENSES, ClientRound, Defense

if TYPE_CHECKING:
    from fedsim.defenses.update_ops import Tensors


class PruneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keep: float = Field(gt=0, le=1, description="fraction of the change's entries kept (largest |value|)")


@DEFENSES.register("prune")
class Prune(Defense):
    """Keep the largest `keep` fraction of the client's change (global top-k), zero the rest."""

    Params = PruneParams

    def transform_update(self, update: Tensors, *, kind: str, reference: Tensors, ctx: ClientRound) -> Tensors:
        from fedsim.defenses.update_ops import apply_delta, delta, fraction_nonzero, prune_smallest

        if kind == "gradient":  # the gradient is itself the change
            pruned = prune_smallest(update, self.params.keep)
            self._kept = fraction_nonzero(pruned)
            return pruned
        pruned = prune_smallest(delta(update, reference), self.params.keep)
        self._kept = fraction_nonzero(pruned)
        return apply_delta(reference, pruned)

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        return {"prune_kept": float(getattr(self, "_kept", 0.0))}
