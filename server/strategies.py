"""Strategy plug-ins (`federation.strategy`): Flower's own strategies, configured from the scenario.

Each factory names the `federation.strategy_args` it accepts, so a typo fails before training, and
names its Flower class as text, so that checking a scenario does not import Flower.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.registry import registry

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from fedsim.scenario import FederationConfig

STRATEGIES = registry("strategy")


@dataclass(frozen=True)
class StrategyFactory:
    """A Flower strategy class (``module:Class``) with the defaults of the extra arguments it takes."""

    cls: str
    defaults: dict[str, float]
    description: str  # shown by `fedsim list`

    def load(self) -> type[Strategy]:
        module, _, name = self.cls.partition(":")
        return getattr(importlib.import_module(module), name)


_FLOWER = "flwr.serverapp.strategy"
STRATEGIES.register("fedavg")(StrategyFactory(f"{_FLOWER}:FedAvg", {},
                                              "FedAvg: average of client weights, weighted by examples."))
STRATEGIES.register("fedprox")(StrategyFactory(f"{_FLOWER}:FedProx", {"proximal_mu": 0.01},
                                               "FedProx: FedAvg plus a proximal term in local training."))
STRATEGIES.register("fedadam")(StrategyFactory(
    f"{_FLOWER}:FedAdam", {"eta": 1e-2, "eta_l": 1e-1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "FedAdam: server-side Adam on the averaged update."))


def check_strategy_args(config: FederationConfig) -> StrategyFactory:
    """The strategy's factory; raise ValueError naming the first unknown `strategy_args` key."""
    factory: StrategyFactory = STRATEGIES.get(config.strategy)
    unknown = sorted(set(config.strategy_args) - set(factory.defaults))
    if unknown:
        valid = ", ".join(sorted(factory.defaults)) or "none"
        raise ValueError(f"federation.strategy_args.{unknown[0]}: unknown for {config.strategy} (valid: {valid})")
    return factory


def build_strategy(config: FederationConfig) -> Strategy:
    """The honest Flower strategy named in the scenario; unknown strategy_args are errors."""
    factory = check_strategy_args(config)
    n_train = max(1, round(config.clients * config.fraction_train))
    n_eval = max(1, round(config.clients * config.fraction_evaluate)) if config.fraction_evaluate > 0 else 0
    return factory.load()(
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=n_train,
        min_evaluate_nodes=n_eval,
        min_available_nodes=config.clients,
        **{**factory.defaults, **config.strategy_args},
    )
