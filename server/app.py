"""The ServerApp: discovers the clients, runs the scenario's strategy, evaluates on the held-out test set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedsim.run_folder import RunFolder
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed, seed_everything
from fedsim.server.capture import Capture
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
    outcome: dict = field(default_factory=dict)  # filled in by the app: final metrics, failures


def make_server_app(plan: ServerPlan) -> ServerApp:
    """Build the ServerApp for one run; results go to plan.run and plan.outcome."""
    app = ServerApp()
    sc = plan.scenario

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = plan.task.build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        scores = plan.task.metrics(predict(model, plan.x_test), plan.y_test)
        plan.run.append_metrics(round=server_round, kind="server", **{f"test_{k}": v for k, v in scores.items()},
                                elapsed_s=plan.run.elapsed())
        plan.on_round(server_round, scores)
        return MetricRecord({f"test_{k}": v for k, v in scores.items()})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        seed_everything(derive_seed(sc.seed, "server"))
        partition_of = discover_partitions(grid, sc.federation.clients,
                                           sc.resources.start_timeout(sc.federation.clients))
        capture = Capture(sc, plan.run, hidden=plan.updates_hidden, auxiliary=plan.x_test)
        strategy = ObservedStrategy(build_strategy(sc.federation), run=plan.run, partition_of=partition_of,
                                    capture=capture)
        plan.outcome["strategy"] = strategy
        torch.manual_seed(derive_seed(sc.seed, "init"))
        initial = plan.task.build_model()
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial.state_dict()),
            num_rounds=sc.federation.rounds,
            timeout=sc.resources.timeout_s,
            train_config=ConfigRecord(),
            evaluate_config=ConfigRecord(),
            evaluate_fn=evaluate,
        )
        plan.outcome["arrays"] = result.arrays
        plan.outcome["server_metrics"] = {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()}

    return app
