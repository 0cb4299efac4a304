"""Secure aggregation: the server, and so every attacker behind it, sees only the sum of a round's updates.

Simulated in fedsim's observation layer, not run as a cryptographic protocol: Flower's SecAgg+
(`SecAggPlusWorkflow` + `secaggplus_mod`) drives the legacy workflow API, not the Message-API
strategies fedsim's server runs, so the guarantee is modelled where attackers get their view.
The strategy still aggregates the individual replies (the masks of SecAgg+ would cancel to the same
sum), but nothing records or hands out one client's update: attacks that need one are skipped with
the reason in the report, and a targeted round's aggregate is recorded instead.
"""

from __future__ import annotations

from pydantic import BaseModel

from fedsim.defenses.base import DEFENSES, Defense
from fedsim.scenario import Scenario


@DEFENSES.register("secure_aggregation")
class SecureAggregation(Defense):
    """The server learns only the aggregate of each round (costs no utility; hides per-client updates)."""

    once = True
    hides_client_updates = True

    @classmethod
    def check_scenario(cls, params: BaseModel, scenario: Scenario) -> None:
        fed = scenario.federation
        share = fed.clients * fed.fraction_train
        per_round = max(int(share), round(share), 1)  # as Flower samples
        if per_round < 2:
            raise ValueError(f"needs at least 2 clients per round (federation.clients x fraction_train gives "
                             f"{per_round}): the sum of one update is that update")
