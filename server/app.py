"""The ServerApp: discovers the clients, runs the scenario's strategy, evaluates on the held-out test
set and checkpoints after every round; a resumed run starts from its checkpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedsim.run_folder import RunFolder
from fedsim.scenario import Scenario, scenario_fingerprint
from fedsim.seeding import derive_seed, seed_everything
from fedsim.server.capture import Capture
from fedsim.server.checkpoint import Checkpoint, capture_rng, restore_rng, restore_strategy, strategy_state
from fedsim.server.observation import ObservedStrategy, discover_partitions
from fedsim.server.strategies import build_strategy
from fedsim.tasks import Task
from fedsim.training import predict


@dataclass
class ServerPlan:
    """What the server holds: the scenario, the task, the test set and the run folder."""

    scenario: Scenario
    task: Task
    x_test: torch.Tensor
    y_test: torch.Tensor
    run: RunFolder
    updates_hidden: bool = False  # secure aggregation: the server sees only each round's aggregate
    on_round: Callable[[int, dict[str, float]], None] = lambda r, m: None
    resume: Checkpoint | None = None  # where a resumed run starts (its rounds so far are in the run folder)
    done: threading.Event = field(default_factory=threading.Event)  # set when the server app ends
    outcome: dict = field(default_factory=dict)  # filled in by the app: the observed strategy (failures)


def make_server_app(plan: ServerPlan) -> ServerApp:
    """Build the ServerApp for one run; results go to plan.run and plan.outcome."""
    app = ServerApp()
    sc = plan.scenario
    done = plan.resume.round if plan.resume is not None else 0
    fingerprint = scenario_fingerprint(sc)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round += done
        if done and server_round == done:  # a resumed run: this round was evaluated before the stop
            return None
        model = plan.task.build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = plan.task.metrics(predict(model, plan.x_test), plan.y_test)
        plan.run.append_metrics(round=server_round, kind="server", **{f"test_{k}": v for k, v in scores.items()},
                                elapsed_s=plan.run.elapsed())
        plan.on_round(server_round, scores)
        observed: ObservedStrategy = plan.outcome["strategy"]
        Checkpoint(round=server_round, global_state=arrays.to_torch_state_dict(),
                   strategy=strategy_state(observed.inner), clients=observed.client_states,
                   rng=capture_rng()).write(plan.run.checkpoint_file, fingerprint)
        return MetricRecord({f"test_{k}": v for k, v in scores.items()})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            federate(grid)
        finally:
            plan.done.set()

    def federate(grid: Grid) -> None:
        seed_everything(derive_seed(sc.seed, "server"))
        partition_of = discover_partitions(grid, sc.federation.clients,
                                           sc.resources.start_timeout(sc.federation.clients))
        capture = Capture(sc, plan.run, hidden=plan.updates_hidden, auxiliary=plan.x_test)
        resume = plan.resume
        strategy = ObservedStrategy(build_strategy(sc.federation), run=plan.run, partition_of=partition_of,
                                    capture=capture, rounds_done=done,
                                    client_states=resume.clients if resume is not None else None,
                                    round_timeout=sc.resources.timeout_s)
        plan.outcome["strategy"] = strategy
        torch.manual_seed(derive_seed(sc.seed, "init"))
        initial = ArrayRecord(plan.task.build_model().state_dict())
        if resume is not None:
            restore_strategy(strategy.inner, resume.strategy)
            initial = ArrayRecord(resume.global_state)
            restore_rng(resume.rng)  # last: every draw from here on is the uninterrupted run's
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=sc.federation.rounds - done,
            timeout=sc.resources.timeout_s,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=evaluate,
        )

    return app
