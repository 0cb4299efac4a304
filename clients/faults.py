"""Injected client faults (`faults:` in a scenario): a client that raises, hangs, or sends garbage in
one round, so that a user can see (and the tests check) that the round goes on with the others."""

from __future__ import annotations

import time

import torch

from fedsim.scenario import FaultSpec, Scenario


class InjectedFaultError(RuntimeError):
    """The failure a `raise` fault asks for."""


def fault_for(scenario: Scenario, server_round: int, client: int) -> FaultSpec | None:
    return next((f for f in scenario.faults if f.round == server_round and f.client == client), None)


def before_training(fault: FaultSpec | None) -> None:
    """`raise` fails the client's round; `hang` holds it past the server's round timeout."""
    if fault is None:
        return
    if fault.kind == "raise":
        raise InjectedFaultError(f"injected fault: client {fault.client} raises in round {fault.round}")
    if fault.kind == "hang":
        time.sleep(fault.seconds)


def corrupt(update: dict[str, torch.Tensor], fault: FaultSpec | None) -> dict[str, torch.Tensor]:
    """`nan` fills the first floating array with NaN; `bad_shape` flattens it and adds one entry."""
    if fault is None or fault.kind not in ("nan", "bad_shape"):
        return update
    key = next(k for k, v in update.items() if v.is_floating_point())
    value = update[key]
    broken = torch.full_like(value, float("nan")) if fault.kind == "nan" else torch.zeros(value.numel() + 1)
    return {**update, key: broken}
