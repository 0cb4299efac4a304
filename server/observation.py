"""The observation layer: wraps an honest Flower strategy without changing what it computes.

It learns which node holds which partition (node ids change every run), presents nodes to the
strategy in partition order (so seeded client sampling is reproducible), orders replies by
partition before aggregation (so float sums are reproducible), and records every client's metrics
and failures into the run folder. Attack observation hooks in here (see DESIGN.md). An observed
client's true batch arrives in its reply (clients share no file system with the driver); it is
taken out here, before the strategy or any attacker sees the reply, and kept for scoring only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.protocol import DEFENSE_STATE_KEY, DEFENSE_TENSORS_KEY, PLACEMENT_KEYS, TRUTH_KEY
from fedsim.run_folder import RunFolder
from fedsim.server.capture import Capture
from fedsim.server.checkpoint import ClientState

PER_CLIENT_KEYS = ("partition-id", "seconds", "gradient_update", "batch_size", *PLACEMENT_KEYS)


class FederationError(RuntimeError):
    """The federation cannot go on (e.g. every client of a round failed)."""


def discover_partitions(grid: Grid, n_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node which partition it holds; returns node id -> partition id."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < n_clients:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of {n_clients} clients came up within {timeout:.0f} s "
                                  "(resources.start_timeout_s: raise it on a busy machine)")
        time.sleep(0.05)
    messages = [Message(RecordDict(), message_type=MessageType.QUERY, dst_node_id=n) for n in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise FederationError(f"a client failed to start: {short_reason(reply.error.reason)}")
        mapping[reply.metadata.src_node_id] = int(reply.content["metrics"]["partition-id"])
    if len(mapping) != n_clients:
        raise FederationError(f"only {len(mapping)} of {n_clients} clients answered within {timeout:.0f} s "
                              "(resources.start_timeout_s: raise it on a busy machine)")
    return mapping


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): (.+)$")


def short_reason(reason: str) -> str:
    """The root cause of a client's error reply, e.g. 'RuntimeError: CUDA out of memory'.

    Flower wraps a client's exception in Ray's traceback text; the first `XError: message` line
    that is not Flower's own wrapper is what the user needs to see."""
    for line in reason.splitlines():
        match = _ERROR_LINE.match(line.strip())
        if match and not match.group(1).endswith("ClientAppException"):
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    lines = [ln.strip() for ln in reason.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


class _PartitionOrderedGrid:
    """A view of the grid that lists node ids in partition order."""

    def __init__(self, grid: Grid, partition_of: dict[int, int]) -> None:
        self._grid = grid
        self._partition_of = partition_of

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda n: self._partition_of.get(n, n))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class ObservedStrategy(Strategy):
    """Delegates to an honest strategy; records per-client results and client failures.

    A resumed run starts Flower's loop again at its round 1: `rounds_done` shifts every round number
    the strategy and the records see, and `client_states` (each client's defense state, from the
    checkpoint) goes once to each client with its first instruction."""

    def __init__(self, inner: Strategy, *, run: RunFolder, partition_of: dict[int, int],
                 capture: Capture | None = None, rounds_done: int = 0,
                 client_states: dict[int, ClientState] | None = None, round_timeout: float = 3600.0) -> None:
        self.inner = inner
        self.run = run
        self.partition_of = partition_of
        self.capture = capture
        self.failures: list[dict[str, Any]] = []
        self.rounds_done = rounds_done
        self.client_states: dict[int, ClientState] = dict(client_states or {})
        self._to_restore = set(self.client_states)
        self.round_timeout = round_timeout
        self._sent: dict[str, dict[int, dict[str, tuple[int, ...]]]] = {}  # phase -> client -> arrays' shapes

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.rounds_done
        view = _PartitionOrderedGrid(grid, self.partition_of)
        messages = self.inner.configure_train(server_round, arrays, config, view)  # type: ignore[arg-type]
        if self.capture is not None:
            messages = self.capture.instruct(server_round, messages, self.partition_of)
        messages = [self._restored(msg) for msg in messages]
        self._sent["train"] = {self.partition_of.get(m.metadata.dst_node_id, -1): _shapes(m) for m in messages}
        return messages

    def _restored(self, msg: Message) -> Message:
        """The instruction, plus the client's saved defense state if it has not had it since the resume."""
        client = self.partition_of.get(msg.metadata.dst_node_id, -1)
        if client not in self._to_restore:  # sent until the client has answered once (a failed round keeps it due)
            return msg
        content = RecordDict(dict(msg.content.items()))
        for key, record in zip((DEFENSE_STATE_KEY, DEFENSE_TENSORS_KEY), self.client_states[client].records(),
                               strict=True):
            if record is not None:
                content[key] = record
        return Message(content, message_type=msg.metadata.message_type, dst_node_id=msg.metadata.dst_node_id)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        view = _PartitionOrderedGrid(grid, self.partition_of)
        messages = list(self.inner.configure_evaluate(server_round + self.rounds_done, arrays, config, view))
        self._sent["evaluate"] = {self.partition_of.get(m.metadata.dst_node_id, -1): {} for m in messages}
        return messages  # type: ignore[arg-type]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.rounds_done
        good = self._observe(server_round, "train", replies)
        if not good and self._sent.get("train"):
            first = next(f for f in self.failures if f["round"] == server_round)
            raise FederationError(f"round {server_round}: every client failed; first: {first['error']}")
        arrays, metrics = self.inner.aggregate_train(server_round, good)
        if self.capture is not None:
            self.capture.observe_aggregate(server_round, arrays)
        return arrays, _drop_per_client(metrics)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.rounds_done
        ordered = self._observe(server_round, "evaluate", replies)
        return _drop_per_client(self.inner.aggregate_evaluate(server_round, ordered))

    def _observe(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[Message]:
        """Record every reply; return the usable ones in partition order. A client that failed, sent
        arrays that do not fit what it was sent, or did not answer in time is recorded as a failure."""
        ordered = sorted(replies, key=lambda m: self.partition_of.get(m.metadata.src_node_id, -1))
        good, answered = [], set()
        for msg in ordered:
            client = self.partition_of.get(msg.metadata.src_node_id, -1)
            answered.add(client)
            if msg.has_error():
                self._fail(server_round, client, phase, short_reason(msg.error.reason), traceback=msg.error.reason)
                continue
            truth = msg.content.pop(TRUTH_KEY, None)  # the client's true batch: for scoring, never for the strategy
            if phase == "train":
                self._keep_state(client, msg)
            if phase == "train" and (problem := invalid_update(msg, self._sent["train"].get(client, {}))):
                self._fail(server_round, client, phase, f"InvalidUpdate: {problem}")
                continue
            if phase == "train" and self.capture is not None:
                self.capture.observe(server_round, client, msg, truth=truth)
            metrics = dict(msg.content["metrics"])
            metrics.pop("partition-id", None)
            self.run.append_metrics(round=server_round, kind=phase, client=client, **metrics)
            good.append(msg)
        for client in sorted(set(self._sent.get(phase, {})) - answered):
            self._fail(server_round, client, phase,
                       f"Timeout: no reply within {self.round_timeout:g}s (resources.timeout_s)")
        return good

    def _fail(self, server_round: int, client: int, phase: str, error: str, traceback: str = "") -> None:
        failure = {"round": server_round, "client": client, "phase": phase, "error": error}
        self.failures.append(failure)
        self.run.append_metrics(kind="client_error", **failure, traceback=traceback or error)


    def _keep_state(self, client: int, msg: Message) -> None:
        """Take the client's defense state out of its reply (for the checkpoint only)."""
        self._to_restore.discard(client)  # it answered: its context holds the restored state now
        numbers, tensors = msg.content.pop(DEFENSE_STATE_KEY, None), msg.content.pop(DEFENSE_TENSORS_KEY, None)
        if numbers is not None or tensors is not None:
            self.client_states[client] = ClientState(
                numbers={k: float(v) for k, v in numbers.items()} if numbers is not None else {},
                tensors=dict(tensors.to_torch_state_dict()) if tensors is not None else {})


def _shapes(msg: Message) -> dict[str, tuple[int, ...]]:
    return {k: tuple(a.shape) for k, a in msg.content["arrays"].items()} if "arrays" in msg.content else {}


def invalid_update(reply: Message, sent: dict[str, tuple[int, ...]]) -> str | None:
    """Why a client's train reply cannot be aggregated (None if it can): every array must be one it
    was sent, with the same shape and finite values; trained weights must hold all of them (a
    gradient may leave out what has none, e.g. buffers)."""
    import torch

    if "arrays" not in reply.content or "metrics" not in reply.content:
        return "the reply has no arrays or no metrics"
    arrays = reply.content["arrays"]
    if extra := sorted(set(arrays) - set(sent)):
        return f"array {extra[0]} was not sent"
    if not reply.content["metrics"].get("gradient_update", 0) and (missing := sorted(set(sent) - set(arrays))):
        return f"array {missing[0]} is missing"
    for key, array in arrays.items():
        if tuple(array.shape) != sent[key]:
            return f"array {key} has shape {tuple(array.shape)}, {sent[key]} was sent"
    for key, tensor in arrays.to_torch_state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"array {key} holds NaN or infinite values"
    return None


def _drop_per_client(metrics: MetricRecord | None) -> MetricRecord | None:
    if metrics is not None:
        for key in PER_CLIENT_KEYS:
            metrics.pop(key, None)
    return metrics
