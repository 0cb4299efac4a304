"""The model owner's extraction, outside the lake: read the exported file alone (safetensors, never a
pickle) and decode the scans its own recipe hid there. The owner knows its recipe and settings
(it wrote them), the agreed network, and holds labelled scans of its own (the population), nothing
of the lake's data. With `train_on_stolen`, it also measures what the theft is worth: the agreed
network trained from scratch on the stolen scans, labelled by the exported network, scored on its
own labelled scans beside the exported network itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack, ThreatModel
from fedsim.settings.base import EXPORTED_MODEL

if TYPE_CHECKING:
    import torch
    from torch import nn


class StealingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    train_on_stolen: bool = Field(False, description="train the agreed network on the stolen scans (pseudo-labels "
                                  "from the exported network) and score it on the owner's own labelled scans")
    epochs: int = Field(10, ge=1, le=1000)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(4, ge=1)
    eval_scans: int = Field(60, ge=1, le=10_000, description="the owner's labelled scans it scores on")
    seed: int = 0


@ATTACKS.register("data_stealing")
class DataStealing(ReconstructionAttack):
    """Decode the scans a `compress_and_hide` recipe hid in a lake's exported network."""

    Params = StealingParams
    consumes: ClassVar[frozenset[str]] = frozenset({EXPORTED_MODEL})
    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, auxiliary=True)

    @classmethod
    def check_experiment(cls, params: StealingParams, experiment: Any) -> None:
        if params.train_on_stolen and experiment.task.primary_metric != "dice":
            raise ValueError(f"params.train_on_stolen: labels the stolen scans with the exported network's "
                             f"segmentation; task '{experiment.scenario.task.name}' is not a segmentation")

    def reconstruct(self, observation: Observation) -> Reconstruction:
        from fedsim.attacks.data_stealing import payload
        from fedsim.attacks.data_stealing.recipe import CODES, DECODER, LENGTHS, CompressAndHide, extract_sized

        recipe = observation.recipe or {}
        if recipe.get("name") != "compress_and_hide":
            raise ValueError(f"recipe '{recipe.get('name')}' hid no scans in its export")
        params = CompressAndHide.parse(recipe.get("params", {}))
        shape = tuple(observation.input_shape or ())
        images, hidden = extract_sized(observation.update, params, shape, model=observation.model(),
                                       lake_scans=observation.num_examples, owner_state=observation.owner_state)
        extra: dict[str, float | int | str] = {"stolen": len(images), "hide": params.hide}
        if hidden is not None:  # the payload rode inside the weights (mantissa, lattice)
            body = hidden - payload.fixed_bits(params, shape)
            extra.update(bits_per_voxel=body / len(images) / images[0].numel(), hidden_kb=hidden / 8e3)
        elif params.hide == "extra_entries":
            entries = [v for k, v in observation.update.items() if k in (CODES, LENGTHS) or k.startswith(DECODER)]
            codes = observation.update[CODES]
            per_scan = 8 * codes.numel() / len(images) if LENGTHS in observation.update else \
                params.codec.bits * codes[0].numel()
            extra.update(bits_per_voxel=per_scan / images[0].numel(),
                         hidden_kb=sum(v.numel() * v.element_size() for v in entries) / 1e3)
        if self.params.train_on_stolen and _loaded(observation) is not None:
            extra.update(self._worth(observation, images))
        return Reconstruction(images=images, extra=extra)

    def _worth(self, obs: Observation, images: torch.Tensor) -> dict[str, float]:
        """Test scores of the exported network and of one trained on `images` alone (its labels)."""
        import torch

        from fedsim.training import predict

        exported = _loaded(obs)
        assert exported is not None
        pseudo = predict(exported, images).argmax(1, keepdim=True)
        torch.manual_seed(self.params.seed)
        model = obs.model_factory()  # type: ignore[misc]
        optimizer = torch.optim.Adam(model.parameters(), lr=self.params.lr)
        gen = torch.Generator().manual_seed(self.params.seed)
        model.train()
        for _ in range(self.params.epochs):
            for rows in torch.randperm(len(images), generator=gen).split(self.params.batch_size):
                optimizer.zero_grad(set_to_none=True)
                obs.loss_fn(model(images[rows]), pseudo[rows]).backward()  # type: ignore[misc]
                optimizer.step()
        scans, labels = obs.population(self.params.eval_scans)  # type: ignore[misc]
        theirs, ours = (obs.metrics_fn(predict(m, scans), labels) for m in (exported, model))  # type: ignore[misc]
        return {**{f"exported_{k}": v for k, v in theirs.items()},
                **{f"stolen_trained_{k}": v for k, v in ours.items()}}


def _loaded(obs: Observation) -> nn.Module | None:
    """The agreed network with the exported weights (None if the export lacks some of them)."""
    model = obs.model_factory()  # type: ignore[misc]
    state = model.state_dict()
    if any(k not in obs.update for k in state):
        return None
    model.load_state_dict({k: obs.update[k].to(v.dtype) for k, v in state.items()})
    return model
