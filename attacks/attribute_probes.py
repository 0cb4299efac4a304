"""The attacker's attribute probes: classifiers it trains on its own clean scans (people of the same
population, or the server's held-out scans where the dataset has none) for a patient's binary
attributes — sex, and the diagnosis where the cohort has one — then applies to every reconstruction.
What a reconstruction gives away beyond identity; a defense that blurs identity but keeps the
diagnosis readable has not hidden the diagnosis. Usable by every reconstruction attack
(`reconstruction.probes` in a scenario)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.data.synthetic import Cohort
    from fedsim.experiment import Experiment

ATTRIBUTES = ("sex", "diagnosis")


@dataclass
class Probe:
    model: nn.Module
    majority: float  # accuracy of always guessing the attacker's majority class: no reconstruction needed
    clean: float  # accuracy on real held-out scans it did not train on: what a perfect reconstruction would give


def attribute(cohort: Cohort, name: str) -> np.ndarray | None:
    values = getattr(cohort, name, None)
    return None if values is None else np.asarray(values).astype(np.int64)


def train_probes(experiment: Experiment, names: list[str], *, scans: int, epochs: int, seed: int) -> dict[str, Probe]:
    """One probe per attribute, on `scans` of the attacker's own (preprocessed as the task does)."""
    import torch

    from fedsim.data.datasets import load_population
    from fedsim.scenario import FederationConfig
    from fedsim.training import predict, train_local

    sc = experiment.scenario
    pool = load_population(sc.data, seed=sc.seed, n_subjects=scans)
    test_rows = list(experiment.split.test)
    if pool is None:  # no population: train on half the server's held-out scans, check on the other half
        rows, test_rows = test_rows[::2], test_rows[1::2]
        pool = experiment.cohort
    else:
        rows = list(range(len(pool)))
    x, _ = experiment.task.tensors(pool, rows)
    x_check, _ = experiment.task.tensors(experiment.cohort, test_rows)
    out = {}
    for name in names:
        y = torch.from_numpy(attribute(pool, name)[rows])
        prevalence = float(y.double().mean())
        task = _probe_task(x.dim() - 2, prevalence)
        torch.manual_seed(seed)
        model = task.build_model()
        train_local(model, x, y, task=task, rng=np.random.default_rng(seed),
                    config=FederationConfig(local_epochs=epochs, batch_size=8, lr=1e-3))
        truth = torch.from_numpy(attribute(experiment.cohort, name)[test_rows])
        clean = float(((predict(model, x_check) > 0).long() == truth).double().mean())
        out[name] = Probe(model=model, majority=max(prevalence, 1 - prevalence), clean=clean)
    return out


def probe_scores(probes: dict[str, Probe], images: torch.Tensor, cohort: Cohort, rows: list[int]) -> dict[str, float]:
    """Each probe's accuracy on the reconstructions of cohort `rows` (and its two references)."""
    from fedsim.training import predict

    out = {}
    for name, probe in probes.items():
        truth = attribute(cohort, name)[rows]
        guess = (predict(probe.model, images) > 0).long().numpy()
        out[f"probe_{name}"] = float((guess == truth).mean())
        out[f"probe_{name}_majority"] = probe.majority
        out[f"probe_{name}_clean"] = probe.clean
    return out


def _probe_task(spatial_dims: int, prevalence: float):
    """A one-logit classifier of the project's CNN, 2D or 3D like the attacked task's input."""
    from fedsim.scenario import TaskConfig
    from fedsim.tasks.diagnosis import DiagnosisSliceTask, DiagnosisTask

    cls = DiagnosisSliceTask if spatial_dims == 2 else DiagnosisTask
    channels = [16, 32, 64] if spatial_dims == 2 else [8, 16, 32, 64]
    return cls(config=TaskConfig(name="diagnosis", model={"channels": channels}), target_mean=prevalence)
