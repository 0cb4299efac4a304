"""The centralized reference (`reference: centralized`): the scenario's model trained on the union
of the clients' training data with the clients' budget, so that a run's model is judged beside what
pooling the data would have given (and the membership family attacks the same model).

It is trained once per run and kept as `centralized.safetensors` beside `model.safetensors`, so a
rerun of the attacks does not train it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.experiment import Experiment
    from fedsim.run_folder import RunFolder
    from fedsim.scenario import Scenario

CENTRALIZED = "centralized"  # the reference model's name in the run folder (centralized.safetensors)


def training_epochs(scenario: Scenario, n_train: int) -> int:
    """Epochs of the centralized reference: as many passes as one client makes over its data."""
    fed = scenario.federation
    if fed.local_steps:
        return max(1, round(fed.rounds * fed.local_steps * fed.batch_size / max(n_train, 1)))
    return fed.rounds * fed.local_epochs


def train_model(experiment: Experiment, x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int,
                steps: int | None = None) -> nn.Module:
    """The scenario's model trained centrally on (x, y) with the clients' optimiser settings
    (`steps` optimizer steps if given, else `epochs` passes)."""
    import numpy as np
    import torch

    from fedsim.training import train_local

    torch.manual_seed(seed)
    model = experiment.task.build_model()
    config = experiment.scenario.federation.model_copy(update={"local_steps": steps, "local_epochs": epochs})
    train_local(model, x, y, task=experiment.task, config=config, rng=np.random.default_rng(seed))
    return model.eval()


def centralized_model(run: RunFolder, experiment: Experiment, *, log: Callable[[str], None]) -> nn.Module:
    """The centralized reference of this run: loaded when already trained, else trained and saved."""
    from fedsim.seeding import derive_seed

    scenario, members = experiment.scenario, experiment.train_rows
    epochs = training_epochs(scenario, len(experiment.split.clients[0].train))
    meta = {"epochs": epochs, "seed": derive_seed(scenario.seed, "centralized"), "members": len(members)}
    saved = run.load_model(CENTRALIZED, meta=meta)
    model = experiment.task.build_model()
    if saved is not None:
        model.load_state_dict(saved)
        return model.eval()
    log(f"[reference] training the centralized reference ({epochs} epochs on the pooled training data) ...")
    x, y = experiment.tensors(members)
    model = train_model(experiment, x, y, seed=meta["seed"], epochs=epochs)
    run.save_model(model.state_dict(), CENTRALIZED, meta)
    return model


def reference_summary(run: RunFolder, experiment: Experiment, *, log: Callable[[str], None]) -> dict[str, Any]:
    """summary.json's `reference`: the centralized model's test metrics (the run's test set)."""
    from fedsim.training import predict

    model = centralized_model(run, experiment, log=log)
    scores = experiment.task.metrics(predict(model, experiment.x_test), experiment.y_test)
    epochs = training_epochs(experiment.scenario, len(experiment.split.clients[0].train))
    return {"name": CENTRALIZED, "epochs": epochs, "train": len(experiment.train_rows), "final": scores}
