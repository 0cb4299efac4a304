"""The experiment: everything derived from the scenario before training, typed.

`prepare` loads the cohort, splits it into clients and a server test set, and builds the task; it is
deterministic from the scenario and seed, so `fedsim attack` rebuilds the same experiment from a run
folder. Attack families receive it (and the run folder) instead of reaching into the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from fedsim.scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    import torch

    from fedsim.data.partition import FederationSplit
    from fedsim.data.synthetic import Cohort
    from fedsim.tasks import Task


@dataclass(frozen=True)
class Experiment:
    """The cohort, its split, the task and the server's test set of one scenario."""

    scenario: Scenario
    cohort: Cohort
    split: FederationSplit
    task: Task
    x_test: torch.Tensor  # the server's held-out scans: its test set, and an attacker's population sample
    y_test: torch.Tensor
    withheld: Mapping[str, str] = field(default_factory=dict)  # observation kind -> why this run's setting
    # does not hand it to an adversary (e.g. secure aggregation hides single clients' updates)
    defense_copies: Callable[[], list[Any]] | None = None  # fresh attacker's copies of the clients' defenses
    # (attacks.base.DefenseCopy), built on the top floor where attacks and defenses may meet
    _population: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False,
                                                                       compare=False)

    def tensors(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed (inputs, targets) of cohort rows."""
        return self.task.tensors(self.cohort, rows)

    @property
    def train_rows(self) -> list[int]:
        """Every row some client trains on (the members of the federated model)."""
        return [i for c in self.split.clients for i in c.train]

    def prior(self) -> torch.Tensor:
        """The population-mean scan: what an attacker knows without attacking."""
        return self.x_test.mean(dim=0)

    def population(self, n: int, *, slices: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` preprocessed (scans, targets) of people outside the cohort (an attacker's own data,
        e.g. public scans from the same sites, whose ages it knows); where the dataset has none, the
        server's own held-out scans. With `slices` (2D slice tasks), also the axial slices that many
        either side of each central one: row i then shows person i % n."""
        from fedsim.data.datasets import load_population

        if (n, slices) in self._population:
            return self._population[n, slices]
        data = self.scenario.data
        if slices and not self.task.slices_of_volumes:
            raise ValueError(f"task '{self.scenario.task.name}' has no neighbouring slices (a 2D slice task has)")
        cohort = load_population(data, seed=self.scenario.seed, n_subjects=n)
        rows = list(range(n))
        if cohort is None:
            if n > len(self.x_test):
                raise ValueError(f"dataset '{data.dataset}' has no population sample beyond the server's "
                                 f"{len(self.x_test)} held-out scans ({n} asked for)")
            if not slices:
                return self.x_test[:n], self.y_test[:n]
            cohort, rows = self.cohort, list(self.split.test[:n])
        task = self.task
        found = task.neighbour_slices(cohort, rows, slices) if slices else task.tensors(cohort, rows)
        self._population[n, slices] = found
        return self._population[n, slices]


def prepare(scenario: Scenario, *, withheld: Mapping[str, str] | None = None,
            defense_copies: Callable[[Scenario, Task], list[Any]] | None = None,
            log: Callable[[str], None] = print) -> Experiment:
    """Load the cohort, split it and build the task (deterministic from the scenario and seed).
    `defense_copies(scenario, task)` builds an attacker's copies of the clients' defenses."""
    import numpy as np

    from fedsim.data.datasets import DATASETS, load_dataset
    from fedsim.data.partition import cohort_metadata, split_federation
    from fedsim.tasks import TASKS

    if DATASETS.get(scenario.data.dataset).scans:
        log(f"generating / loading cohort: {scenario.data.dataset}, {scenario.data.n_subjects} subjects at "
            f"{scenario.data.shape}^3, {scenario.data.sites} sites")
    else:
        log(f"loading records: {scenario.data.dataset}")
    cohort = load_dataset(scenario.data, seed=scenario.seed)
    task_cls = TASKS.get(scenario.task.name)
    targets = task_cls.target_values(cohort, scenario.task)
    try:
        split = split_federation(site=cohort.site, age=cohort.age, config=scenario.data,
                                 n_clients=scenario.federation.clients, seed=scenario.seed,
                                 **cohort_metadata(cohort))
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    train_rows = [i for c in split.clients for i in c.train]
    mean, std = float(np.mean(targets[train_rows])), float(np.std(targets[train_rows]) or 1.0)
    task = task_cls(config=scenario.task, target_mean=mean, target_std=std, data=scenario.data)
    x_test, y_test = task.tensors(cohort, split.test)
    return Experiment(scenario=scenario, cohort=cohort, split=split, task=task, x_test=x_test, y_test=y_test,
                      withheld=dict(withheld or {}),
                      defense_copies=partial(defense_copies, scenario, task) if defense_copies else None)
