"""Malicious-server behaviours (`server.behaviours`): what a dishonest server changes in what it sends.

Each behaviour edits the train instructions sent to targeted clients only, is named in the YAML
and recorded in the report, because a careful client could notice it.
"""

from __future__ import annotations

from typing import ClassVar

from flwr.app import ConfigRecord
from pydantic import BaseModel, Field

from fedsim.plugin import Configurable, NoParams
from fedsim.protocol import BATCH_KEY, UPDATE_KEY
from fedsim.registry import registry


class BehaviourParams(NoParams):
    clients: list[int] | None = Field(None, description="only these targeted clients; none = all targeted")


class ServerBehaviour(Configurable):
    """Base of behaviours: `modify` edits a targeted client's train config in place."""

    Params: ClassVar[type[BaseModel]] = BehaviourParams

    def applies_to(self, client: int) -> bool:
        return self.params.clients is None or client in self.params.clients

    def modify(self, config: ConfigRecord) -> None:
        raise NotImplementedError


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
