"""What the server records for attackers, and how a malicious server changes what it asks for.

For targeted (round, client) pairs it applies the scenario's malicious behaviours to the train
instructions (config and, for model tampering, the arrays), asks the client to keep its true batch
for scoring, and saves the client's reply together with the model it was sent into `observations/`
(safetensors + JSON). A tampered reply is recorded whole for the attacker, then mapped back to the
agreed architecture so the honest strategy aggregates it like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedsim.protocol import ARCH_KEY, CAPTURE_KEY
from fedsim.run_folder import RunFolder, observation_name
from fedsim.scenario import Scenario
from fedsim.server.behaviours import BEHAVIOURS, ServerBehaviour
from fedsim.settings.base import AGGREGATE, GRADIENT, WEIGHTS


class Capture:
    """Targeting, behaviours and observation records of one run."""

    def __init__(self, scenario: Scenario, run: RunFolder, *, hidden: bool = False,
                 auxiliary: torch.Tensor | None = None) -> None:
        """`hidden`: the server sees only round aggregates (secure aggregation); `auxiliary`: the
        server's own scans (its test set), for behaviours that fit the population."""
        self.targets = scenario.server.targets
        self.enabled = scenario.captures_updates or bool(scenario.server.behaviours)
        self.hidden = hidden
        self.record_updates = scenario.captures_updates and not self.hidden
        self.behaviours: list[tuple[str, ServerBehaviour]] = [
            (b.name, BEHAVIOURS.get(b.name)(**b.params)) for b in scenario.server.behaviours
        ]
        for _, behaviour in self.behaviours:
            behaviour.prepare(scenario=scenario, auxiliary=auxiliary)
        self.client_lr = scenario.federation.lr
        self.run = run
        self._sent: dict[int, ArrayRecord] = {}  # the honest global model of each targeted round
        self._tampered: dict[tuple[int, int], tuple[ArrayRecord, str | None]] = {}  # (round, client): sent, arch

    def targeted(self, server_round: int, client: int) -> bool:
        t = self.targets
        return (self.enabled and (t.rounds is None or server_round in t.rounds)
                and (t.clients is None or client in t.clients))

    def instruct(self, server_round: int, messages: Iterable[Message], partition_of: dict[int, int]) -> list[Message]:
        """Give each targeted client its own (modified) copy of the train instructions."""
        out = []
        for msg in messages:
            client = partition_of.get(msg.metadata.dst_node_id, -1)
            if not self.targeted(server_round, client):
                out.append(msg)
                continue
            arrays = msg.content["arrays"]
            self._sent[server_round] = arrays
            config = ConfigRecord(dict(msg.content["config"]))
            active = [b for _, b in self.behaviours if b.applies_to(client)]
            for behaviour in active:
                behaviour.modify(config)
            if any(b.edits_arrays for b in active):  # model tampering: this client gets its own arrays
                state = arrays.to_torch_state_dict()
                for behaviour in active:
                    state = behaviour.modify_arrays(state, config, server_round=server_round, client=client)
                arrays = ArrayRecord(state)
                self._tampered = {k: v for k, v in self._tampered.items() if k[0] == server_round}
                self._tampered[(server_round, client)] = (arrays, config.get(ARCH_KEY))
            config[CAPTURE_KEY] = self.record_updates
            out.append(Message(RecordDict({"arrays": arrays, "config": config}),
                               message_type=msg.metadata.message_type, dst_node_id=msg.metadata.dst_node_id))
        return out

    def observe_aggregate(self, server_round: int, arrays: ArrayRecord | None) -> None:
        """Under secure aggregation, a targeted round leaves the server its aggregate and nothing else."""
        if not (self.hidden and self.enabled and server_round in self._sent and arrays is not None):
            return
        self.run.write_observation(f"round{server_round:03d}_aggregate", update=arrays.to_torch_state_dict(),
                                   meta={"round": server_round, "kind": AGGREGATE, "lr": self.client_lr},
                                   global_state=self._sent[server_round].to_torch_state_dict())

    def observe(self, server_round: int, client: int, reply: Message, *, truth: ArrayRecord | None = None) -> None:
        """Save a targeted reply whole (and `truth`, the batch behind it, in the private area for
        scoring), map a tampered one back to the agreed architecture, and turn a gradient into the
        weights of one SGD step, so that the honest strategy can aggregate it."""
        if not self.targeted(server_round, client):
            return
        sent = self._sent[server_round].to_torch_state_dict()
        tampered, arch = self._tampered.pop((server_round, client), (None, None))
        update = reply.content["arrays"].to_torch_state_dict()
        metrics = dict(reply.content["metrics"])
        is_gradient = bool(metrics.get("gradient_update", 0))
        if self.record_updates:
            meta: dict[str, Any] = {
                "round": server_round, "client": client,
                "kind": GRADIENT if is_gradient else WEIGHTS,
                "batch_size": metrics.get("batch_size"), "local_steps": metrics.get("local_steps"),
                "num_examples": metrics.get("num-examples"), "lr": self.client_lr,
                "behaviours": [name for name, b in self.behaviours if b.applies_to(client)],
            }
            if arch is not None:
                meta["architecture"] = arch
            self.run.write_observation(observation_name(server_round, client), update=update, meta=meta,
                                       global_state=tampered.to_torch_state_dict() if tampered else sent)
            if truth is not None:
                batch = truth.to_torch_state_dict()
                self.run.write_truth(observation_name(server_round, client), inputs=batch["inputs"],
                                     targets=batch["targets"], rows=batch["rows"].tolist())
        if tampered is not None:
            for _, behaviour in reversed(self.behaviours):
                if behaviour.applies_to(client):
                    update = behaviour.restore_update(update)
        if is_gradient:
            update = {k: sent[k] - self.client_lr * update[k] if k in update else sent[k] for k in sent}
        if is_gradient or tampered is not None:
            reply.content["arrays"] = ArrayRecord({k: update[k].to(sent[k].dtype) for k in sent})
