"""Strategy plug-ins (`federation.strategy`): Flower's own strategies, configured from the scenario.

Each factory names the `federation.strategy_args` it accepts, so a typo fails before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from fedsim.registry import registry
from fedsim.scenario import FederationConfig

STRATEGIES = registry("strategy")


@dataclass(frozen=True)
class StrategyFactory:
    """A Flower strategy class with the defaults of the extra arguments it takes."""

    cls: Callable[..., Strategy]
    defaults: dict[str, float]
    description: str  # shown by `fedsim list`


STRATEGIES.register("fedavg")(StrategyFactory(FedAvg, {}, "FedAvg: average of client weights, weighted by examples."))
STRATEGIES.register("fedprox")(
    StrategyFactory(FedProx, {"proximal_mu": 0.01}, "FedProx: FedAvg plus a proximal term in local training.")
)
STRATEGIES.register("fedadam")(
    StrategyFactory(
        FedAdam,
        {"eta": 1e-2, "eta_l": 1e-1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
        "FedAdam: server-side Adam on the averaged update.",
    )
)


def build_strategy(config: FederationConfig) -> Strategy:
    """The honest Flower strategy named in the scenario; unknown strategy_args are errors."""
    factory: StrategyFactory = STRATEGIES.get(config.strategy)
    unknown = sorted(set(config.strategy_args) - set(factory.defaults))
    if unknown:
        valid = ", ".join(sorted(factory.defaults)) or "none"
        raise ValueError(
            f"federation.strategy_args.{unknown[0]}: unknown for {config.strategy} (valid: {valid})"
        )
    n_train = max(1, round(config.clients * config.fraction_train))
    n_eval = max(1, round(config.clients * config.fraction_evaluate)) if config.fraction_evaluate > 0 else 0
    return factory.cls(
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=n_train,
        min_evaluate_nodes=n_eval,
        min_available_nodes=config.clients,
        **{**factory.defaults, **config.strategy_args},
    )
