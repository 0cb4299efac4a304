"""The server's checkpoint: everything the next round needs, written atomically after every round.

One safetensors file (never pickle): the global model, the strategy's own arrays (FedAdam's
moments, ...), each client's defense state (DP-SGD's privacy spent, a learned module's weights:
clients send it back in a private record that the observation layer strips), and torch's RNG; the
round, Python's and NumPy's RNG states and each client's defense numbers travel as JSON in the
file's metadata. Resuming from it gives exactly the rounds an uninterrupted run would have had.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedsim.run_folder import CHECKPOINT_META, DamagedFileError, save_tensors


@dataclass
class ClientState:
    """What one client's defenses remember between rounds (numbers and tensors)."""

    numbers: dict[str, float] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def records(self) -> tuple[MetricRecord | None, ArrayRecord | None]:
        return (MetricRecord(dict(self.numbers)) if self.numbers else None,
                ArrayRecord(dict(self.tensors)) if self.tensors else None)


@dataclass
class Checkpoint:
    """The state of a federation at the end of round `round`."""

    round: int
    global_state: dict[str, torch.Tensor]
    strategy: dict[str, dict[str, torch.Tensor]]  # attribute -> arrays (e.g. m_t, v_t)
    clients: dict[int, ClientState]
    rng: dict[str, Any]  # python / numpy as JSON, torch as a tensor
    fingerprint: str = ""  # the resolved scenario it belongs to (set when read)

    def write(self, path: Path, fingerprint: str) -> None:
        tensors = {f"global/{k}": v for k, v in self.global_state.items()}
        tensors.update({f"strategy/{attr}/{k}": v for attr, arrays in self.strategy.items() for k, v in arrays.items()})
        tensors.update({f"client/{c}/{k}": v for c, s in self.clients.items() for k, v in s.tensors.items()})
        tensors["rng/torch"] = self.rng["torch"]
        meta = {"round": self.round, "scenario": fingerprint, "python_rng": self.rng["python"],
                "numpy_rng": self.rng["numpy"], "client_numbers": {str(c): s.numbers for c, s in self.clients.items()},
                "strategy_attributes": sorted(self.strategy)}
        save_tensors(path, tensors, metadata={CHECKPOINT_META: json.dumps(meta)})

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        """The checkpoint at `path`; DamagedFileError (one line) when it is not one fedsim wrote."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads(fh.metadata()[CHECKPOINT_META])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
            return cls._from(meta, tensors)
        except (SafetensorError, KeyError, TypeError, ValueError) as exc:
            raise DamagedFileError.of(path, exc) from None

    @classmethod
    def _from(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Checkpoint:
        strategy: dict[str, dict[str, torch.Tensor]] = {a: {} for a in meta["strategy_attributes"]}
        clients = {int(c): ClientState(numbers=dict(n)) for c, n in meta["client_numbers"].items()}
        global_state = {}
        for key, value in tensors.items():
            part, _, rest = key.partition("/")
            if part == "global":
                global_state[rest] = value
            elif part == "strategy":
                attr, _, name = rest.partition("/")
                strategy[attr][name] = value
            elif part == "client":
                client, _, name = rest.partition("/")
                clients.setdefault(int(client), ClientState()).tensors[name] = value
        rng = {"python": meta["python_rng"], "numpy": meta["numpy_rng"], "torch": tensors["rng/torch"]}
        return cls(round=int(meta["round"]), global_state=global_state, strategy=strategy, clients=clients, rng=rng,
                   fingerprint=str(meta["scenario"]))


def capture_rng() -> dict[str, Any]:
    """The server process's random states: Python's (Flower samples clients with it), NumPy's, torch's."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(state), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state()}


def restore_rng(rng: dict[str, Any]) -> None:
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])


def strategy_state(strategy: Strategy) -> dict[str, dict[str, torch.Tensor]]:
    """The arrays a Flower strategy keeps between rounds (FedOpt's m_t / v_t, FedAvgM's momentum, ...):
    every attribute that is a non-empty mapping of NumPy arrays. Numbers are its configuration."""
    return {attr: {k: torch.from_numpy(np.array(v, copy=True)) for k, v in value.items()}
            for attr, value in vars(strategy).items()
            if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values())}


def restore_strategy(strategy: Strategy, state: dict[str, dict[str, torch.Tensor]]) -> None:
    for attr, arrays in state.items():
        setattr(strategy, attr, {k: v.numpy() for k, v in arrays.items()})
