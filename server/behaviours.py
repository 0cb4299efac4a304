"""Malicious-server behaviours (`server.behaviours`): what a dishonest server changes in what it sends.

Each behaviour edits the train instructions sent to targeted clients only (the config, and for
model tampering the arrays too), is named in the YAML and recorded in the report, because a careful
client could notice it. A behaviour that changes the model also maps the reply back to the agreed
architecture, so the honest strategy aggregates as usual.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from fedsim.plugin import Configurable, NoParams
from fedsim.protocol import ARCH_KEY, BATCH_KEY, UPDATE_KEY
from fedsim.registry import registry
from fedsim.seeding import derive_seed

if TYPE_CHECKING:  # torch and Flower load where a behaviour runs, not when a scenario is checked
    import torch
    from flwr.app import ConfigRecord

    from fedsim.scenario import Scenario


class BehaviourParams(NoParams):
    clients: list[int] | None = Field(None, description="only these targeted clients; none = all targeted")


class ServerBehaviour(Configurable):
    """Base of behaviours: `modify` edits a targeted client's train config in place; a behaviour that
    tampers with the model also overrides `modify_arrays` and `restore_update`."""

    Params: ClassVar[type[BaseModel]] = BehaviourParams

    def applies_to(self, client: int) -> bool:
        return self.params.clients is None or client in self.params.clients

    def prepare(self, *, scenario: Scenario, auxiliary: torch.Tensor | None) -> None:
        """Once, before round 1: what the server knows (the scenario, its own held-out scans)."""

    def modify(self, config: ConfigRecord) -> None:
        """Edit the train config (the default changes nothing)."""

    def modify_arrays(self, arrays: dict[str, torch.Tensor], config: ConfigRecord, *, server_round: int,
                      client: int) -> dict[str, torch.Tensor]:
        """The model a targeted client receives (after every `modify`); the default sends it unchanged."""
        return arrays

    def restore_update(self, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map the client's reply back to the agreed architecture before aggregation (default: as is)."""
        return update

    @property
    def edits_arrays(self) -> bool:
        return type(self).modify_arrays is not ServerBehaviour.modify_arrays


BEHAVIOURS = registry("behaviour", base=ServerBehaviour)


@BEHAVIOURS.register("request_gradient")
class RequestGradient(ServerBehaviour):
    """Ask for a one-batch gradient instead of trained weights (FedSGD): the easiest update to invert."""

    def modify(self, config: ConfigRecord) -> None:
        config[UPDATE_KEY] = "gradient"


class BatchSizeParams(BehaviourParams):
    batch_size: int = Field(1, ge=1)


@BEHAVIOURS.register("request_batch_size")
class RequestBatchSize(ServerBehaviour):
    """Ask the client to train on smaller batches: fewer images mixed into each gradient."""

    Params = BatchSizeParams

    def modify(self, config: ConfigRecord) -> None:
        config[BATCH_KEY] = int(self.params.batch_size)


class ImprintParams(BehaviourParams):
    unit: Literal["batch", "absolute"] = Field("batch", description="batch: bins x the client's batch size")
    bins: float = Field(4.0, ge=1, description="imprint units: a multiple of the batch size, or a count")
    strength: float = Field(1e-4, gt=0, le=1, description="how much the block changes an average scan, per voxel")

    @field_validator("bins")
    @classmethod
    def _whole(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("unit") == "absolute" and v != int(v):
            raise ValueError("must be a whole number when unit is 'absolute'")
        return v


@BEHAVIOURS.register("imprint")
class Imprint(ServerBehaviour):
    """Put an imprint block in front of the agreed network (Robbing the Fed): its gradient holds, exactly,
    every input that falls alone in one of its bins. Bins sit at quantiles of a linear measurement
    of the server's own scans; the block's arrays and an architecture descriptor travel in the message."""

    Params = ImprintParams

    def prepare(self, *, scenario: Scenario, auxiliary: torch.Tensor | None) -> None:
        if auxiliary is None or len(auxiliary) < 2:
            raise ValueError("imprint: needs at least 2 of the server's own scans to place the bins")
        self.auxiliary = auxiliary
        self.batch_size = scenario.federation.batch_size
        self.seed = scenario.seed
        self._made: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def n_bins(self, batch_size: int) -> int:
        p = self.params
        return int(p.bins) if p.unit == "absolute" else max(1, math.ceil(p.bins * batch_size))

    def modify_arrays(self, arrays: dict[str, torch.Tensor], config: ConfigRecord, *, server_round: int,
                      client: int) -> dict[str, torch.Tensor]:
        import torch

        from fedsim.models.imprint import descriptor, make_imprint, tamper

        bins = self.n_bins(int(config.get(BATCH_KEY, self.batch_size)))  # the batch this client is asked for
        key = (server_round, bins)
        if key not in self._made:  # one block per round and size, shared by that round's targets
            self._made = {k: v for k, v in self._made.items() if k[0] == server_round}
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "imprint", server_round, bins))
            self._made[key] = make_imprint(self.auxiliary, bins=bins, strength=self.params.strength, generator=gen)
        config[ARCH_KEY] = descriptor(input_shape=self.auxiliary.shape[1:], bins=bins)
        return tamper(arrays, self._made[key])

    def restore_update(self, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from fedsim.models.imprint import strip

        return strip(update)
