"""The ClientApp: each simulated hospital trains the global model on its own partition.

Flower pickles the app to the Ray actors with every message, so the app carries only the
scenario and index lists; the cohort itself is loaded (from the on-disk cache) once per actor
process and kept in `_STATE`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.training import LocalResult, one_batch_gradient, predict, train_local
from defenses import DEFENSES
from fedsim.data.datasets import load_dataset
from fedsim.data.partition import ClientSplit
from fedsim.protocol import BATCH_KEY, CAPTURE_KEY, UPDATE_KEY
from fedsim.record import write_ground_truth
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed, seed_everything
from fedsim.tasks import TASKS, Task


@dataclass(frozen=True)
class ClientPlan:
    """What every client needs to know, small enough to ship with each message."""

    run_dir: str  # identifies the run (an actor reused across runs never serves stale data), and is
    # where an observed client keeps its true batch (private/, for scoring only)
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


def _client_data(plan: ClientPlan, partition_id: int) -> _ClientData:
    """This client's tensors, built once per actor process and run."""
    cached = _STATE.get((plan.run_dir, partition_id))
    if cached is not None:
        return cached
    if any(run != plan.run_dir for run, _ in _STATE):
        _STATE.clear()
    sc = plan.scenario
    cohort = load_dataset(sc.data, seed=sc.seed)
    task = TASKS.get(sc.task.name)(config=sc.task, target_mean=plan.target_mean, target_std=plan.target_std)
    split = plan.splits[partition_id]
    x_train, y_train = task.tensors(cohort, split.train)
    x_val, y_val = task.tensors(cohort, split.val or split.train)
    data = _STATE[(plan.run_dir, partition_id)] = _ClientData(task, x_train, y_train, x_val, y_val,
                                                              list(split.train))
    return data


def _device(plan: ClientPlan) -> torch.device:
    use_gpu = plan.scenario.resources.num_gpus > 0 and torch.cuda.is_available()
    return torch.device("cuda" if use_gpu else "cpu")


def _model(plan: ClientPlan, data: _ClientData, msg: Message) -> torch.nn.Module:
    model = data.task.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model.to(_device(plan))


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
        start = time.perf_counter()
        torch.set_num_threads(threads)
        pid = int(context.node_config["partition-id"])
        config = msg.content["config"]
        server_round = int(config["server-round"])
        seed = derive_seed(plan.scenario.seed, "train", server_round, pid)
        seed_everything(seed)
        data = _client_data(plan, pid)
        model = _model(plan, data, msg)
        fed = plan.scenario.federation
        batch_size = int(config.get(BATCH_KEY, fed.batch_size))
        rng = np.random.default_rng(seed)
        gradient_requested = str(config.get(UPDATE_KEY, "weights")) == "gradient"
        if gradient_requested:
            update, used, loss = one_batch_gradient(model, data.x_train, data.y_train, task=data.task,
                                                    batch_size=batch_size, rng=rng)
            result = LocalResult(loss=loss, steps=1, examples=len(used), used=used)
        else:
            result = train_local(model, data.x_train, data.y_train, task=data.task, config=fed, rng=rng,
                                 proximal_mu=float(config.get("proximal-mu", 0.0)), batch_size=batch_size)
            update = model.cpu().state_dict()
        # built here, in the worker: a defense from path/to/file.py must be imported where it runs
        for spec in plan.scenario.defenses:  # YAML order; what leaves the client is what the server sees
            update = DEFENSES.get(spec.name)(**spec.params).transform_update(update, kind="gradient" if gradient_requested else "weights")
        arrays = ArrayRecord(update)
        if bool(config.get(CAPTURE_KEY, False)):
            write_ground_truth(plan.run_dir, server_round, pid, inputs=data.x_train[result.used],
                               targets=data.y_train[result.used], rows=[data.rows[i] for i in result.used])
        metrics = {
            "num-examples": result.examples,
            "partition-id": pid,
            "train_loss": result.loss,
            "local_steps": result.steps,
            "batch_size": min(batch_size, len(data.y_train)),
            "gradient_update": int(gradient_requested),
            "seconds": time.perf_counter() - start,
        }
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        pid = int(context.node_config["partition-id"])
        data = _client_data(plan, pid)
        model = _model(plan, data, msg)
        scores = data.task.metrics(predict(model, data.x_val), data.y_val)
        metrics = {"num-examples": len(data.y_val), "partition-id": pid}
        metrics.update({f"val_{k}": v for k, v in scores.items()})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app
