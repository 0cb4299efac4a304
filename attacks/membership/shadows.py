"""Shadow models for the membership attacks: the target's training recipe, run side by side, each once.

The attacker knows the recipe (hyper-parameters), so it trains shadows the way the target was
trained: the target's number of optimizer steps, but never more passes over the shadow's (smaller)
data than the target made over its own, so shadows neither undertrain nor memorise more than it.
The shadows of one attack are independent: they run as tasks of a `fedsim.fanout.TaskPool`.

The centrally trained and the federated global model are scored on the same evaluation and leaked
sets, so their shadows train on the same scans with the same seeds and differ only in how many
steps their recipes allow. Each such shadow is therefore trained once, to the longer budget, with a
copy of its weights kept at the shorter one: the model that training anew would give, for free.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from fedsim.fanout import TaskPool
from fedsim.scenario import FederationConfig
from fedsim.tasks import Task
from fedsim.training import predict, train_local
from fedsim.training_plan import Batch, TrainingHook

ShadowJob = tuple[torch.Tensor, torch.Tensor, int]  # a shadow's training scans, targets and seed
PredictFn = Callable[[torch.Tensor], torch.Tensor]


class Budget(NamedTuple):
    """How the target was trained: optimizer steps, and passes over its data."""

    steps: int
    passes: float

    def shadow_steps(self, n: int, batch_size: int) -> int:
        """Steps for a shadow on n scans: the target's, capped at its passes over the shadow's data."""
        return min(self.steps, max(1, math.ceil(self.passes * n / min(batch_size, n))))


class Snapshots(TrainingHook):
    """Keeps a copy of the model's weights after each of the given steps."""

    def __init__(self, steps: Iterable[int]) -> None:
        self.at = set(steps)
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def after_step(self, step: int, model: nn.Module, batch: Batch) -> None:
        if step in self.at:
            self.states[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_snapshots(task: Task, federation: FederationConfig, x: torch.Tensor, y: torch.Tensor, seed: int,
                    steps: list[int]) -> list[dict[str, torch.Tensor]]:
    """A fresh model trained with the clients' optimiser settings for max(steps) steps on (x, y); its
    weights after each of `steps`. Module-level: a Ray task runs it."""
    torch.manual_seed(seed)
    model = task.build_model()
    config = federation.model_copy(update={"local_steps": max(steps), "local_epochs": 1})
    keep = Snapshots(steps)
    train_local(model, x, y, task=task, config=config, rng=np.random.default_rng(seed), hooks=[keep])
    return [keep.states[s] for s in steps]


def _fingerprint(x: torch.Tensor, y: torch.Tensor, seed: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for t in (x, y):
        digest.update(str((tuple(t.shape), t.dtype)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest.update(str(seed).encode())
    return digest.hexdigest()


class ShadowTrainer:
    """Trains the shadow models of one run's attacks: side by side in `pool`, each training set once."""

    def __init__(self, task: Task, federation: FederationConfig, pool: TaskPool) -> None:
        self.task, self.federation, self.pool = task, federation, pool
        self._weights: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.trained = 0  # shadows actually trained (the rest were read off another budget's training)

    def train_many(self, jobs: list[ShadowJob], budget: Budget, also: Iterable[Budget] = ()) -> list[PredictFn]:
        """One shadow per job under `budget`, each as its predict function. `also`: the budgets of the
        run's other targets scored on the same sets; a shadow not trained yet is trained to the longest
        of them all, and kept at each."""
        batch = self.federation.batch_size
        keys = [(_fingerprint(x, y, seed), budget.shadow_steps(len(x), batch)) for x, y, seed in jobs]
        todo = {key[0]: job for key, job in zip(keys, jobs, strict=True) if key not in self._weights}
        plans = {fp: sorted({b.shadow_steps(len(job[0]), batch) for b in (budget, *also)}) for fp, job in todo.items()}
        results = self.pool.map(train_snapshots, [(self.task, self.federation, *todo[fp], plans[fp]) for fp in todo])
        for fp, states in zip(todo, results, strict=True):
            self._weights.update({(fp, s): state for s, state in zip(plans[fp], states, strict=True)})
        self.trained += len(todo)
        return [self._predictor(self._weights[key]) for key in keys]

    def recipe(self, budget: Budget, also: Iterable[Budget] = ()) -> tuple[Callable[..., PredictFn],
                                                                         Callable[[list[ShadowJob]], list[PredictFn]]]:
        """(train_fn(x, y, seed) for one shadow, train_many(jobs) for several) under `budget`."""
        also = tuple(also)
        return (lambda x, y, seed: self.train_many([(x, y, seed)], budget, also)[0],
                lambda jobs: self.train_many(jobs, budget, also))

    def _predictor(self, state: dict[str, torch.Tensor]) -> PredictFn:
        model = self.task.build_model()
        model.load_state_dict(state)
        model.eval()
        return lambda q: predict(model, q)
