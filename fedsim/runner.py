"""Run one scenario end to end: data -> partitions -> task -> Flower apps on Ray -> run folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.attacks.membership.evaluation import check_membership, run_membership
from fedsim.attacks.runner import check_attacks, run_attacks
from fedsim.clients.app import ClientPlan, make_client_app
from fedsim.data.datasets import load_dataset
from fedsim.data.partition import FederationSplit, cohort_metadata, split_federation
from fedsim.data.synthetic import Cohort
from fedsim.engine import EngineError, run_federation
from fedsim.record import RunRecord, read_metrics
from fedsim.report import final_dp_epsilon, write_outputs
from fedsim.scenario import Scenario, ScenarioError
from fedsim.seeding import seed_everything
from fedsim.tasks import TASKS, Task
from fedsim.server.app import ServerPlan, make_server_app
from fedsim.server.strategies import build_strategy


@dataclass
class Prepared:
    """Everything derived from the scenario before training; rebuilt identically by `fedsim attack`."""

    cohort: Cohort
    split: FederationSplit
    task: Task
    x_test: torch.Tensor
    y_test: torch.Tensor


def prepare(scenario: Scenario, *, log: Callable[[str], None] = print) -> Prepared:
    """Load the cohort, split it and build the task (deterministic from the scenario and seed)."""
    log(f"generating / loading cohort: {scenario.data.dataset}, {scenario.data.n_subjects} subjects at "
        f"{scenario.data.shape}^3, {scenario.data.sites} sites")
    cohort = load_dataset(scenario.data, seed=scenario.seed)
    task_cls = TASKS.get(scenario.task.name)
    targets = task_cls.targets(cohort)
    try:
        split = split_federation(site=cohort.site, age=cohort.age, config=scenario.data,
                                 n_clients=scenario.federation.clients, seed=scenario.seed,
                                 **cohort_metadata(cohort))
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    train_rows = [i for c in split.clients for i in c.train]
    mean, std = float(np.mean(targets[train_rows])), float(np.std(targets[train_rows]) or 1.0)
    task = task_cls(config=scenario.task, target_mean=mean, target_std=std)
    x_test, y_test = task.tensors(cohort, split.test)
    return Prepared(cohort=cohort, split=split, task=task, x_test=x_test, y_test=y_test)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    failures: list[dict[str, Any]]
    error: str | None = None


def run_scenario(
    scenario: Scenario,
    *,
    out_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train the scenario's federation; the run folder is complete even if clients failed."""
    t0 = time.perf_counter()
    seed_everything(scenario.seed)
    try:
        build_strategy(scenario.federation)  # fail on bad strategy_args before any work
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None

    prep = prepare(scenario, log=log)
    cohort, split, task = prep.cohort, prep.split, prep.task
    check_membership(scenario, prep)
    check_attacks(scenario, prep)
    if scenario.resources.num_gpus > 0 and not scenario.resources.ray_address and not torch.cuda.is_available():
        log("resources.num_gpus: no GPU on this machine; clients train on CPU")

    record = RunRecord.create(scenario, out_dir)
    record.write_json("partitions.json", {
        "by": scenario.data.partition.by,
        "test": len(split.test),
        "clients": [
            {**size, "sites": sorted({cohort.site_names[cohort.site[i]] for i in c.train}),
             "mean_age": float(np.mean(cohort.age[c.train]))}
            for size, c in zip(split.sizes(), split.clients)
        ],
    })
    log("partitions: " + ", ".join(f"client {s['client']}: {s['train']} train / {s['val']} val"
                                   for s in split.sizes()) + f"; server test: {len(split.test)}")
    baseline = task.baseline(task.target_mean, prep.y_test)
    rounds = scenario.federation.rounds

    def on_round(r: int, scores: dict[str, float]) -> None:
        key = task.primary_metric
        label = "initial" if r == 0 else f"round {r}/{rounds}"
        log(f"[{label}] test {key.upper()} {scores[key]:.2f} ({task.baseline_name} {baseline[key]:.2f}) "
            f"· {record.elapsed():.0f}s")

    server_plan = ServerPlan(scenario=scenario, task=task, x_test=prep.x_test, y_test=prep.y_test, record=record,
                             on_round=on_round)
    client_plan = ClientPlan(run_dir=str(record.path.resolve()), scenario=scenario, splits=tuple(split.clients),
                             target_mean=task.target_mean, target_std=task.target_std)
    error = None
    try:
        run_federation(server_app=make_server_app(server_plan), client_app=make_client_app(client_plan),
                       num_clients=scenario.federation.clients, resources=scenario.resources,
                       log_file=record.path / "flower.log")
    except EngineError as exc:
        error = str(exc)

    strategy = server_plan.outcome.get("strategy")
    failures = list(strategy.failures) if strategy is not None else []
    arrays = server_plan.outcome.get("arrays")
    if arrays is not None and scenario.output.save_model:
        record.save_model(arrays.to_torch_state_dict())
    attack_rows, membership_rows = [], []
    if scenario.attacks and error is None:
        attack_rows = run_attacks(record.path, scenario, scenario.attacks, prep=prep, log=log)
        final_state = arrays.to_torch_state_dict() if arrays is not None else None
        membership_rows = run_membership(record.path, scenario, scenario.attacks, prep=prep,
                                         final_state=final_state, log=log)
    summary = _summary(scenario, server_plan.outcome, baseline, task.primary_metric, failures, error,
                       wall_s=time.perf_counter() - t0, target_mean=task.target_mean)
    summary["baseline_name"] = task.baseline_name
    summary["defenses"] = [spec.key for spec in scenario.defenses]
    summary["dp_epsilon"] = final_dp_epsilon(read_metrics(record.path))
    summary["attacks"] = [{k: v for k, v in row.items() if k != "traceback"} for row in attack_rows]
    summary["membership"] = [{k: v for k, v in row.items() if k != "traceback"} for row in membership_rows]
    record.write_json("summary.json", summary)
    write_outputs(record.path)
    return RunResult(run_dir=record.path, summary=summary, failures=failures, error=error)


def _summary(scenario: Scenario, outcome: dict, baseline: dict[str, float], key: str,
             failures: list[dict], error: str | None, *, wall_s: float, target_mean: float) -> dict[str, Any]:
    server = outcome.get("server_metrics", {})
    last_round = max(server) if server else None
    final = {k.removeprefix("test_"): v for k, v in server[last_round].items()} if last_round is not None else {}
    return {
        "scenario": scenario.name,
        "status": "failed" if error else ("completed_with_client_failures" if failures else "completed"),
        "error": error,
        "rounds_completed": last_round or 0,
        "rounds": scenario.federation.rounds,
        "primary_metric": key,
        "final": final,
        "initial": {k.removeprefix("test_"): v for k, v in server.get(0, {}).items()},
        "baseline_predict_mean": baseline,
        "target_mean": target_mean,
        "client_failures": len(failures),
        "device": "cuda" if scenario.resources.num_gpus > 0 and torch.cuda.is_available() else "cpu",
        "wall_s": wall_s,
    }
