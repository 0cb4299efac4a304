"""The ClientApp: each simulated hospital trains the global model on its own partition.

Flower pickles the app to the Ray actors with every message, so the app carries only the
scenario and index lists; the cohort itself is loaded (from the on-disk cache) once per actor
process and kept in `_STATE`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.clients.faults import before_training, corrupt, fault_for
from fedsim.data.datasets import load_dataset
from fedsim.data.partition import ClientSplit
from fedsim.defenses import DEFENSES, Defense
from fedsim.defenses.base import ClientRound
from fedsim.models.imprint import build_received
from fedsim.protocol import (
    ARCH_KEY,
    BATCH_KEY,
    CAPTURE_KEY,
    DEFENSE_STATE_KEY,
    DEFENSE_TENSORS_KEY,
    TRUTH_KEY,
    UPDATE_KEY,
)
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed, seed_everything
from fedsim.tasks import TASKS, Task
from fedsim.training import one_batch_gradient, predict, train_local
from fedsim.training_plan import LocalBudget, local_budget


@dataclass(frozen=True)
class ClientPlan:
    """What every client needs to know, small enough to ship with each message."""

    run_id: str  # identifies the run, so that an actor reused across runs never serves stale data; clients
    # never write to the driver's run folder (on a cluster it is on another machine)
    scenario: Scenario
    splits: tuple[ClientSplit, ...]
    target_mean: float
    target_std: float


@dataclass
class _ClientData:
    task: Task
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    rows: list[int]  # cohort rows of x_train


_STATE: dict[tuple[str, int], _ClientData] = {}
_COHORT: dict[str, object] = {}  # run id -> the cohort, loaded once per actor (an actor serves many clients)


def _client_data(plan: ClientPlan, partition_id: int) -> _ClientData:
    """This client's tensors, built once per actor process and run."""
    cached = _STATE.get((plan.run_id, partition_id))
    if cached is not None:
        return cached
    if any(run != plan.run_id for run, _ in _STATE) or any(run != plan.run_id for run in _COHORT):
        _STATE.clear()
        _COHORT.clear()
    sc = plan.scenario
    if plan.run_id not in _COHORT:
        _COHORT[plan.run_id] = load_dataset(sc.data, seed=sc.seed)
    cohort = _COHORT[plan.run_id]
    task = TASKS.get(sc.task.name)(config=sc.task, target_mean=plan.target_mean, target_std=plan.target_std,
                                   data=sc.data)
    split = plan.splits[partition_id]
    x_train, y_train = task.tensors(cohort, split.train)
    x_val, y_val = task.tensors(cohort, split.val or split.train)
    data = _STATE[(plan.run_id, partition_id)] = _ClientData(task, x_train, y_train, x_val, y_val,
                                                              list(split.train))
    return data


def _device(plan: ClientPlan) -> torch.device:
    """The GPU Ray assigned this actor (Ray sets CUDA_VISIBLE_DEVICES to it), else the CPU."""
    use_gpu = plan.scenario.resources.num_gpus > 0 and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


def _placement(plan: ClientPlan) -> dict[str, float]:
    """Where this client ran: the Ray GPU it was given (-1: none), whether CUDA was there and the
    actor's process, so that placement can be read back from metrics.jsonl (train records add the
    wall-clock start, for concurrency)."""
    import ray

    gpu = -1.0
    if ray.is_initialized():
        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        gpu = float(ids[0]) if ids else -1.0
    return {"ray_gpu": gpu, "cuda": float(_device(plan).type == "cuda"), "worker_pid": float(os.getpid())}


def _model(plan: ClientPlan, data: _ClientData, msg: Message) -> torch.nn.Module:
    """The model the server sent: the agreed network, or the architecture its descriptor names
    (a tampering server's); like a real client, it trains whatever it receives unless a defense vets it."""
    config = msg.content["config"] if "config" in msg.content else {}
    model = build_received(data.task.build_model(), str(config.get(ARCH_KEY, "")) or None)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model.to(_device(plan))


_DEFENSE_STATE, _DEFENSE_TENSORS = DEFENSE_STATE_KEY, DEFENSE_TENSORS_KEY  # same names in the context and messages


def _defenses(plan: ClientPlan, context: Context, task: Task, pid: int, server_round: int,
              budget: LocalBudget) -> list[tuple[Defense, ClientRound]]:
    """The scenario's defenses with their per-round context; each one's state is restored from earlier rounds.

    Built here, in the worker: a defense from path/to/file.py must be imported where it runs."""
    saved = dict(context.state[_DEFENSE_STATE]) if _DEFENSE_STATE in context.state else {}
    tensors = context.state[_DEFENSE_TENSORS].to_torch_state_dict() if _DEFENSE_TENSORS in context.state else {}
    fed = plan.scenario.federation
    out = []
    for i, spec in enumerate(plan.scenario.defenses):
        mine = {k.split(".", 1)[1]: v for k, v in saved.items() if k.split(".", 1)[0] == str(i)}
        ctx = ClientRound(client=pid, server_round=server_round, task=task, config=fed, budget=budget,
                          rng=np.random.default_rng(derive_seed(plan.scenario.seed, "defense", server_round, pid, i)),
                          state={k: float(v) for k, v in mine.items()},
                          tensors={k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)})
        out.append((DEFENSES.get(spec.name)(**spec.params), ctx))
    return out


def _restore_defense_state(context: Context, msg: Message) -> None:
    """A resumed run's first instruction carries what this client's defenses remembered before the
    run stopped (the server's checkpoint); a context that already has state keeps its own."""
    for key in (_DEFENSE_STATE, _DEFENSE_TENSORS):
        if key in msg.content and key not in context.state:
            context.state[key] = msg.content[key]


def _keep_defense_state(context: Context, defenses: list[tuple[Defense, ClientRound]], reply: RecordDict) -> None:
    """Persist what each defense remembers, numbers and tensors (Flower keeps a node's context
    across rounds), and copy it into the reply for the server's checkpoint (a private record: the
    observation layer strips it before the strategy or an attacker sees the reply)."""
    flat = {f"{i}.{k}": float(v) for i, (_, ctx) in enumerate(defenses) for k, v in ctx.state.items()}
    if flat:
        context.state[_DEFENSE_STATE] = MetricRecord(flat)
    tensors = {f"{i}.{k}": v.detach().cpu() for i, (_, ctx) in enumerate(defenses) for k, v in ctx.tensors.items()}
    if tensors:
        context.state[_DEFENSE_TENSORS] = ArrayRecord(tensors)
    for key in (_DEFENSE_STATE, _DEFENSE_TENSORS):
        if key in context.state:
            reply[key] = context.state[key]


def make_client_app(plan: ClientPlan) -> ClientApp:
    """Build the ClientApp for a scenario; `plan` is closed over and shipped to the actors."""
    app = ClientApp()
    threads = max(1, int(plan.scenario.resources.num_cpus))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Tell the server which partition this node holds (node ids change every run)."""
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        start, started_at = time.perf_counter(), time.time()
        torch.set_num_threads(threads)
        pid = int(context.node_config["partition-id"])
        config = msg.content["config"]
        server_round = int(config["server-round"])
        seed = derive_seed(plan.scenario.seed, "train", server_round, pid)
        seed_everything(seed)
        fault = fault_for(plan.scenario, server_round, pid)
        before_training(fault)
        data = _client_data(plan, pid)
        model = _model(plan, data, msg)
        fed = plan.scenario.federation
        batch_size = int(config.get(BATCH_KEY, fed.batch_size))
        gradient_requested = str(config.get(UPDATE_KEY, "weights")) == "gradient"
        budget = local_budget(fed, len(data.y_train), batch_size=batch_size)
        if gradient_requested:  # FedSGD: one batch, one gradient
            budget = dataclasses.replace(budget, steps=1)
        _restore_defense_state(context, msg)
        defenses = _defenses(plan, context, data.task, pid, server_round, budget)
        for defense, ctx in defenses:  # e.g. model_vetting: refuse a tampered model before training on it
            defense.inspect_model(model, config=dict(config), ctx=ctx)
        reference = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        rng = np.random.default_rng(seed)
        x, y = data.x_train, data.y_train
        for defense, ctx in defenses:
            x, y = defense.transform_data(x, y, ctx=ctx)
        hooks = [defense.training_hook(ctx) for defense, ctx in defenses]
        if gradient_requested:
            update, result = one_batch_gradient(model, x, y, task=data.task, batch_size=batch_size, rng=rng,
                                                hooks=hooks, augment=fed.augment)
        else:
            result = train_local(model, x, y, task=data.task, config=fed, rng=rng, hooks=hooks,
                                 proximal_mu=float(config.get("proximal-mu", 0.0)), batch_size=batch_size)
            update = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        kind = "gradient" if gradient_requested else "weights"
        defense_metrics: dict[str, float] = {}
        for defense, ctx in defenses:  # YAML order; what leaves the client is what the server sees
            update = defense.transform_update(update, kind=kind, reference=reference, ctx=ctx)
            defense_metrics.update(defense.round_metrics(ctx=ctx))
        reply = RecordDict({"arrays": ArrayRecord(corrupt(update, fault))})
        _keep_defense_state(context, defenses, reply)
        if bool(config.get(CAPTURE_KEY, False)):  # for scoring only: the server's observation layer strips it
            reply[TRUTH_KEY] = ArrayRecord({"inputs": data.x_train[result.used].contiguous(),
                                            "targets": data.y_train[result.used].contiguous(),
                                            "rows": torch.tensor([data.rows[i] for i in result.used])})
        metrics = {
            "num-examples": result.examples,
            "partition-id": pid,
            "train_loss": result.loss,
            "local_steps": result.steps,
            "batch_size": min(batch_size, len(data.y_train)),
            "gradient_update": int(gradient_requested),
            "seconds": time.perf_counter() - start,
            "started_at": started_at,
            **_placement(plan),
            **defense_metrics,
        }
        reply["metrics"] = MetricRecord(metrics)
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        pid = int(context.node_config["partition-id"])
        data = _client_data(plan, pid)
        model = _model(plan, data, msg)
        scores = data.task.metrics(predict(model, data.x_val), data.y_val)
        metrics = {"num-examples": len(data.y_val), "partition-id": pid, **_placement(plan)}
        metrics.update({f"val_{k}": v for k, v in scores.items()})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app
