"""Membership inference as an experiment: which scans were trained on, who is asked about, what is leaked.

For each target model (a centrally trained reference, the final federated global model, one client's
update) the family draws a balanced evaluation set of members and non-members, plus leaked samples
for the attacker that are disjoint from both, hands each attack a MembershipTarget filtered by its
threat model, and scores its member scores as ROC / AUC / TPR at low FPR / empirical epsilon.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fedsim.attacks.base import ATTACKS, MembershipAttack, MembershipTarget
from fedsim.attacks.membership.config import MembershipConfig
from fedsim.attacks.membership.metrics import best_empirical_epsilon, membership_metrics
from fedsim.attacks.membership.shadows import Budget
from fedsim.experiment import Experiment
from fedsim.reference import centralized_model, training_epochs
from fedsim.run_folder import RunFolder, observation_name
from fedsim.scenario import PluginSpec, Scenario, ScenarioError
from fedsim.training import predict
from fedsim.training_plan import local_budget


@dataclass(frozen=True)
class MembershipSets:
    """Rows of the cohort: the scored candidates (balanced) and the attacker's leaked samples."""

    eval_rows: list[int]
    is_member: np.ndarray
    aux_members: list[int]
    aux_nonmembers: list[int]
    population: list[int] = field(default_factory=list)  # further non-members the attacker holds


ShadowRecipe = tuple[Callable[..., Any], Callable[[list], list]]  # (train_fn, train_many): ShadowTrainer.recipe
POPULATION_MAX = 256  # population scans handed over at most: enough for shadows, bounded memory


def nonmember_pool(experiment: Experiment) -> list[int]:
    """Scans no client ever trained on: the server's test set and the clients' validation splits."""
    split = experiment.split
    return sorted(split.test + [i for c in split.clients for i in c.val])


def membership_sets(members: list[int], nonmembers: list[int], *, eval_size: int, aux_samples: int,
                    seed: int, match: np.ndarray | None = None) -> MembershipSets:
    """Draw balanced evaluation and leaked sets; too few scans is a ScenarioError naming the key.

    `match` (a value per cohort row, e.g. age): each scored non-member is paired with the unused
    member of nearest value. Random draws of 30 + 30 scans differ in age spread by chance, and a
    regressor's error grows with distance from the mean age, so the loss attack's AUC on a model
    that knows nothing moves with the draw; matched, it barely does (docs/results.md).
    The non-members left over form the attacker's population data (`ThreatModel.auxiliary`: scans
    from the same population, like the server's own held-out set): never a candidate, so handing
    them over reveals nothing about the scored scans."""
    n, a = eval_size // 2, aux_samples // 2
    for kind, pool in (("members", members), ("non-members", nonmembers)):
        if n + a > len(pool):
            raise ScenarioError(f"membership.eval_size: {n} {kind} to score plus {a} leaked need {n + a}, "
                                f"but only {len(pool)} are available")
    rng = np.random.default_rng([seed, 7])
    m, o = rng.permutation(members).tolist(), rng.permutation(nonmembers).tolist()
    if match is not None:
        m = _matched(m, o[:n], np.asarray(match, dtype=np.float64))
    return MembershipSets(eval_rows=m[:n] + o[:n], is_member=np.array([True] * n + [False] * n),
                          aux_members=m[n:n + a], aux_nonmembers=o[n:n + a],
                          population=o[n + a:n + a + POPULATION_MAX])


def _matched(members: list[int], scored: list[int], value: np.ndarray) -> list[int]:
    """Members reordered so that the first len(scored) are nearest-value partners of `scored` (greedy,
    without replacement; ties go to the earlier member of the shuffled list); the rest keep their order."""
    free = list(members)
    partners = []
    for row in scored:
        k = int(np.argmin(np.abs(value[free] - value[row])))
        partners.append(free.pop(k))
    return partners + free


def match_values(config: MembershipConfig, experiment: Experiment) -> np.ndarray | None:
    """What members are matched on (`membership.match_target`): the task's target of every cohort row."""
    return experiment.task.target_values(experiment.cohort, experiment.task.config) if config.match_target else None


def member_pools(config: MembershipConfig, experiment: Experiment) -> dict[str, list[int]]:
    """The rows each target model trained on."""
    train = experiment.train_rows
    return {"centralized": train, "global_model": train,
            "client_update": experiment.split.clients[config.client].train}


def target_budget(scenario: Scenario, experiment: Experiment, target: str, config: MembershipConfig, *,
                  batch_size: int | None = None) -> Budget:
    """(optimizer steps, passes over its data) that trained the target, from hyper-parameters the
    attacker knows: clients report their example counts, and the recipe fixes the rest.
    `batch_size`: what the client was asked for in the observed round (client_update)."""
    fed = scenario.federation
    sizes = [len(c.train) for c in experiment.split.clients]
    if target == "centralized":
        epochs = training_epochs(scenario, sizes[0])
        pooled = fed.model_copy(update={"local_steps": None, "local_epochs": epochs})
        return Budget(local_budget(pooled, sum(sizes)).steps, float(epochs))
    n = sizes[config.client] if target == "client_update" else round(float(np.mean(sizes)))
    usual = local_budget(fed, n)
    if target == "client_update":
        observed = local_budget(fed, n, batch_size=batch_size)
        steps = (config.round - 1) * usual.steps + observed.steps
        return Budget(steps, ((config.round - 1) * usual.steps * usual.batch_size
                              + observed.steps * observed.batch_size) / n)
    steps = fed.rounds * usual.steps
    return Budget(steps, steps * usual.batch_size / max(n, 1))


@dataclass
class TargetModel:
    """A model under attack and the rows it was trained on."""

    name: str
    model: nn.Module
    members: list[int]
    global_state: dict[str, torch.Tensor] | None = None
    update_state: dict[str, torch.Tensor] | None = None
    batch_size: int | None = None  # client_update: the batch size of the observed round


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model.eval()


def build_target(name: str, run: RunFolder, experiment: Experiment, config: MembershipConfig, *,
                 log: Callable[[str], None]) -> TargetModel | None:
    """One model named in `membership.targets` with its true member rows (None: the run has none)."""
    task = experiment.task
    if name == "global_model":
        final = run.load_model()
        return TargetModel(name, load_state(task.build_model(), final), experiment.train_rows) if final else None
    if name == "centralized":
        return TargetModel(name, centralized_model(run, experiment, log=log), experiment.train_rows)
    obs = run.observation(observation_name(config.round, config.client))
    if obs is None:
        raise ValueError(f"no update of client {config.client} in round {config.round} was recorded "
                         "(the client failed, or refused the round)")
    if obs.kind != "weights":
        raise ValueError("client_update target needs trained weights, not a requested gradient")
    update = obs.update()
    return TargetModel(name, load_state(task.build_model(), update), run.read_truth(obs.name)["rows"],
                       global_state=obs.global_state(), update_state=update, batch_size=obs.meta.get("batch_size"))


def membership_target(attack: MembershipAttack, target: TargetModel, sets: MembershipSets, *,
                      experiment: Experiment, shadows: ShadowRecipe | None, seed: int) -> MembershipTarget:
    """What this attack's threat model grants of one target model, and nothing more."""
    threat = type(attack).threat
    train_fn, train_many = shadows or (None, None)

    def leaked(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        return experiment.tensors(rows) if rows and threat.auxiliary else None

    return MembershipTarget(
        name=target.name,
        predict=lambda q: predict(target.model, q),
        model=target.model if threat.architecture else None,
        loss_fn=experiment.task.loss if threat.architecture else None,
        global_state=target.global_state if threat.per_client_updates else None,
        update_state=target.update_state if threat.per_client_updates else None,
        train_fn=train_fn if threat.hyperparameters else None,
        train_many=train_many if threat.hyperparameters else None,
        aux_members=leaked(sets.aux_members),
        aux_nonmembers=leaked(sets.aux_nonmembers),
        population=leaked(sets.population),
        seed=seed,
    )


def target_fit(experiment: Experiment, target: TargetModel) -> dict[str, float]:
    """Train vs test error of the target: the overfitting gap that membership leakage follows."""
    task = experiment.task
    key = task.primary_metric
    x, y = experiment.tensors(target.members)
    train = task.metrics(predict(target.model, x), y)[key]
    test = task.metrics(predict(target.model, experiment.x_test), experiment.y_test)[key]
    return {f"train_{key}": train, f"test_{key}": test}


def null_auc(experiment: Experiment, members: list[int], y: torch.Tensor, is_member: np.ndarray) -> dict[str, float]:
    """AUC of the loss attack against a model that learned nothing but the members' mean target.

    It carries no membership information, so its distance from 0.5 is what the evaluation set's
    composition alone does (e.g. members further from the mean age than non-members): read each
    attack's AUC against it, not against 0.5. Regression / label targets only (empty otherwise)."""
    if y.ndim != 1:
        return {}
    mean = float(np.mean(experiment.task.target_values(experiment.cohort, experiment.task.config)[members]))
    error = np.abs(y.double().numpy() - mean)
    return {"null_auc": float(roc_auc_score(is_member.astype(bool), -error))}


def score_attack(spec: PluginSpec, target: TargetModel, sets: MembershipSets, x: torch.Tensor,
                 y: torch.Tensor, *, experiment: Experiment, shadows: ShadowRecipe | None, seed: int,
                 delta: float, log: Callable[[str], None]) -> dict[str, Any]:
    """One attack on one target's evaluation set: its metrics row (an attacker's crash is recorded, not raised)."""
    row: dict[str, Any] = {"attack": spec.key, "target": target.name, "members": int(sets.is_member.sum()),
                           "nonmembers": int((~sets.is_member).sum()), "leaked": len(sets.aux_members) * 2,
                           "population": len(sets.population)}
    start = time.perf_counter()
    try:
        attack = ATTACKS.get(spec.name)(**spec.params)
        row["threat"] = type(attack).threat.describe()
        if target.name not in type(attack).targets:
            return {**row, "status": "skipped", "reason": f"{spec.name} does not apply to {target.name}"}
        view = membership_target(attack, target, sets, experiment=experiment, shadows=shadows, seed=seed)
        scores = np.asarray(attack.membership_scores(view, x, y), dtype=np.float64)
        metrics = membership_metrics(scores, sets.is_member)
        eps = best_empirical_epsilon(scores, sets.is_member, delta=delta)
        row.update(metrics, empirical_epsilon=eps, status="ok")
    except Exception as exc:  # one attacker's crash must not lose the run's results
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    row["seconds"] = time.perf_counter() - start
    if row["status"] == "ok":
        log(f"[membership {spec.key} · {target.name}] AUC {row['auc']:.3f} balanced acc "
            f"{row['balanced_accuracy']:.3f} TPR@1%FPR {row['tpr_at_1pct_fpr']:.3f} · {row['seconds']:.0f}s")
    else:
        log(f"[membership {spec.key} · {target.name}] {row['status']}: {row.get('error') or row.get('reason')}")
    return row
