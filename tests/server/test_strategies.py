import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedsim.scenario import FederationConfig
from fedsim.server.strategies import build_strategy


def test_named_strategies_build_with_defaults_and_overrides():
    assert type(build_strategy(FederationConfig(strategy="fedavg"))) is FedAvg
    prox = build_strategy(FederationConfig(strategy="fedprox", strategy_args={"proximal_mu": 0.5}))
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.5
    adam = build_strategy(FederationConfig(strategy="fedadam"))
    assert isinstance(adam, FedAdam) and adam.eta == 1e-2


def test_sampling_minimums_follow_fractions():
    s = build_strategy(FederationConfig(clients=8, fraction_train=0.5))
    assert s.min_train_nodes == 4 and s.min_available_nodes == 8


def test_unknown_strategy_arg_is_named():
    with pytest.raises(ValueError, match=r"federation.strategy_args.mu: unknown for fedprox \(valid: proximal_mu\)"):
        build_strategy(FederationConfig(strategy="fedprox", strategy_args={"mu": 1.0}))


def test_short_reason_finds_the_root_cause_in_flowers_wrapping():
    from fedsim.server.observation import short_reason

    wrapped = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run()\n"
        '  File "model.py", line 15, in forward\n    raise RuntimeError("boom")\n'
        "RuntimeError: boom\n\nThe above exception was the direct cause of the following exception:\n"
        "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: boom'>"
    )
    assert short_reason(wrapped) == "RuntimeError: boom"
    assert short_reason("plain text\nlast line") == "last line"
