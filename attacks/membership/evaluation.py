"""Membership inference as an experiment: which scans were trained on, who is asked about, what is leaked.

For each target model (a centrally trained reference, the final federated global model, one client's
update) the runner draws a balanced evaluation set of members and non-members, plus leaked samples
for the attacker that are disjoint from both, hands each attack a MembershipTarget filtered by its
threat model, and scores its member scores as ROC / AUC / TPR at low FPR / empirical epsilon.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from torch import nn

from fedsim.attacks.base import ATTACKS, MembershipAttack, MembershipTarget
from fedsim.attacks.membership.metrics import best_empirical_epsilon, membership_metrics, roc_figure
from fedsim.attacks.runner import SECURE_AGGREGATION_SKIP
from fedsim.clients.training import predict, train_local
from fedsim.defenses.base import hides_client_updates
from fedsim.record import atomic_write_text, observation_name, save_tensors
from fedsim.scenario import PluginSpec, Scenario, ScenarioError
from fedsim.seeding import derive_seed


@dataclass(frozen=True)
class MembershipSets:
    """Rows of the cohort: the scored candidates (balanced) and the attacker's leaked samples."""

    eval_rows: list[int]
    is_member: np.ndarray
    aux_members: list[int]
    aux_nonmembers: list[int]
    population: list[int] = field(default_factory=list)  # further non-members the attacker holds


CENTRALIZED_FILE = "centralized.safetensors"  # the reference model, in the run folder
POPULATION_MAX = 256  # population scans handed over at most: enough for shadows, bounded memory


def nonmember_pool(prep: Any) -> list[int]:
    """Scans no client ever trained on: the server's test set and the clients' validation splits."""
    return sorted(prep.split.test + [i for c in prep.split.clients for i in c.val])


def membership_sets(members: list[int], nonmembers: list[int], *, eval_size: int, aux_samples: int,
                    seed: int, match: np.ndarray | None = None) -> MembershipSets:
    """Draw balanced evaluation and leaked sets; too few scans is a ScenarioError naming the key.

    `match` (a value per cohort row, e.g. age): each scored non-member is paired with the unused
    member of nearest value. Random draws of 30 + 30 scans differ in age spread by chance, and a
    regressor's error grows with distance from the mean age, so the loss attack's AUC on a model that
    knows nothing wandered by ±0.07 (measured over 200 draws); matched, by ±0.004.
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


def match_values(scenario: Scenario, prep: Any) -> np.ndarray | None:
    """What members are matched on (`membership.match_target`): the task's target of every cohort row."""
    return prep.task.targets(prep.cohort) if scenario.membership.match_target else None


def check_membership(scenario: Scenario, prep: Any) -> None:
    """Fail before training when the evaluation and leaked sets cannot be drawn (ScenarioError)."""
    cfg = scenario.membership
    if not any(issubclass(ATTACKS.get(s.name), MembershipAttack) for s in scenario.attacks):
        return
    pools = {"centralized": [i for c in prep.split.clients for i in c.train],
             "global_model": [i for c in prep.split.clients for i in c.train],
             "client_update": prep.split.clients[cfg.client].train}
    for name in cfg.targets:
        membership_sets(pools[name], nonmember_pool(prep), eval_size=cfg.eval_size,
                        aux_samples=cfg.aux_samples, seed=scenario.seed)  # counts only: no need to match


def training_epochs(scenario: Scenario, n_train: int) -> int:
    """Epochs of the centralized reference: as many passes as one client makes over its data."""
    fed = scenario.federation
    if fed.local_steps:
        return max(1, round(fed.rounds * fed.local_steps * fed.batch_size / max(n_train, 1)))
    return fed.rounds * fed.local_epochs


def target_budget(scenario: Scenario, prep: Any, target: str) -> tuple[int, float]:
    """(optimizer steps, passes over its data) that trained the target, from hyper-parameters the
    attacker knows: clients report their example counts, and the recipe fixes the rest."""
    fed = scenario.federation
    sizes = [len(c.train) for c in prep.split.clients]
    if target == "centralized":
        epochs, n = training_epochs(scenario, sizes[0]), sum(sizes)
        return epochs * max(1, n // fed.batch_size), float(epochs)
    n = sizes[scenario.membership.client] if target == "client_update" else round(float(np.mean(sizes)))
    rounds = scenario.membership.round if target == "client_update" else fed.rounds
    steps = rounds * (fed.local_steps or fed.local_epochs * max(1, n // min(fed.batch_size, n)))
    return steps, steps * min(fed.batch_size, n) / max(n, 1)


def train_model(prep: Any, scenario: Scenario, x: torch.Tensor, y: torch.Tensor, *, seed: int,
                epochs: int, steps: int | None = None) -> nn.Module:
    """The scenario's model trained centrally on (x, y) with the clients' optimiser settings
    (`steps` optimizer steps if given, else `epochs` passes)."""
    torch.manual_seed(seed)
    model = prep.task.build_model()
    config = scenario.federation.model_copy(update={"local_steps": steps, "local_epochs": epochs})
    train_local(model, x, y, task=prep.task, config=config, rng=np.random.default_rng(seed))
    return model.eval()


def _recipe(prep: Any, scenario: Scenario,
            budget: tuple[int, float]) -> Callable[..., Callable[[torch.Tensor], torch.Tensor]]:
    """The training recipe as an attacker who knows it would run it (for shadow models): the target's
    number of optimizer steps, but never more passes over the shadow's (smaller) data than the target
    made over its own, so shadows neither undertrain nor memorise more than the target."""
    steps, passes = budget

    def train_fn(x: torch.Tensor, y: torch.Tensor, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
        own = max(1, int(np.ceil(passes * len(x) / min(scenario.federation.batch_size, len(x)))))
        model = train_model(prep, scenario, x, y, seed=seed, epochs=1, steps=min(steps, own))
        return lambda q: predict(model, q)
    return train_fn


@dataclass
class TargetModel:
    """A model under attack and the rows it was trained on."""

    name: str
    model: nn.Module
    members: list[int]
    global_state: dict[str, torch.Tensor] | None = None
    update_state: dict[str, torch.Tensor] | None = None


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model.eval()


def build_targets(run_dir: Path, scenario: Scenario, prep: Any, final_state: dict[str, torch.Tensor] | None,
                  *, log: Callable[[str], None]) -> list[TargetModel]:
    """The models named in `membership.targets`, with their true member rows."""
    m = scenario.membership
    all_members = sorted(i for c in prep.split.clients for i in c.train)
    targets = []
    for name in m.targets:
        if name == "global_model" and final_state is not None:
            targets.append(TargetModel(name, load_state(prep.task.build_model(), final_state), all_members))
        elif name == "centralized":
            targets.append(TargetModel(name, centralized_model(run_dir, scenario, prep, all_members, log=log),
                                       all_members))
        elif name == "client_update" and not hides_client_updates(scenario):
            folder = Path(run_dir) / "observations" / observation_name(m.round, m.client)
            meta = json.loads((folder / "update.json").read_text())
            if meta["kind"] != "weights":
                raise ValueError("client_update target needs trained weights, not a requested gradient")
            private = Path(run_dir) / "private" / f"{folder.name}.json"
            update = load_file(folder / "update.safetensors")
            targets.append(TargetModel(name, load_state(prep.task.build_model(), update),
                                       json.loads(private.read_text())["rows"],
                                       global_state=load_file(folder / "global.safetensors"), update_state=update))
    return targets


def centralized_model(run_dir: Path, scenario: Scenario, prep: Any, members: list[int], *,
                      log: Callable[[str], None]) -> nn.Module:
    """The centralized reference, trained once per run and kept as `centralized.safetensors` beside
    `model.safetensors`, so rescoring a run with `fedsim attack` does not train it again."""
    path = Path(run_dir) / CENTRALIZED_FILE
    epochs, seed = training_epochs(scenario, len(prep.split.clients[0].train)), derive_seed(scenario.seed, "centralized")
    meta = {"epochs": epochs, "seed": seed, "members": len(members)}
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == meta:
        return load_state(prep.task.build_model(), load_file(path))
    log(f"[membership] training the centralized reference ({epochs} epochs on pooled data) ...")
    x, y = prep.task.tensors(prep.cohort, members)
    model = train_model(prep, scenario, x, y, seed=seed, epochs=epochs)
    save_tensors(path, model.state_dict(), meta)
    return model


def membership_target(attack: MembershipAttack, target: TargetModel, sets: MembershipSets, *, prep: Any,
                      train_fn: Callable[..., Any] | None, seed: int) -> MembershipTarget:
    """What this attack's threat model grants of one target model, and nothing more."""
    threat = type(attack).threat
    return MembershipTarget(
        name=target.name,
        predict=lambda q: predict(target.model, q),
        model=target.model if threat.architecture else None,
        loss_fn=prep.task.loss if threat.architecture else None,
        global_state=target.global_state if threat.per_client_updates else None,
        update_state=target.update_state if threat.per_client_updates else None,
        train_fn=train_fn if threat.hyperparameters else None,
        aux_members=_leaked(prep, sets.aux_members) if threat.auxiliary else None,
        aux_nonmembers=_leaked(prep, sets.aux_nonmembers) if threat.auxiliary else None,
        population=_leaked(prep, sets.population) if threat.auxiliary else None,
        seed=seed,
    )


def _leaked(prep: Any, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    return prep.task.tensors(prep.cohort, rows) if rows else None


def run_membership(run_dir: Path, scenario: Scenario, specs: list[PluginSpec], *, prep: Any,
                   final_state: dict[str, torch.Tensor] | None, log: Callable[[str], None] = print) -> list[dict]:
    """Every membership attack on every target; results and ROC plots go to attacks/membership/."""
    specs = [s for s in specs if issubclass(ATTACKS.get(s.name), MembershipAttack)]
    if not specs:
        return []
    out_dir, cfg, rows = Path(run_dir) / "attacks" / "membership", scenario.membership, []
    nonmembers = nonmember_pool(prep)
    if "client_update" in cfg.targets and hides_client_updates(scenario):
        rows += [{"attack": s.key, "target": "client_update", "status": "skipped", "reason": SECURE_AGGREGATION_SKIP}
                 for s in specs]
    for target in build_targets(run_dir, scenario, prep, final_state, log=log):
        try:
            sets = membership_sets(target.members, nonmembers, eval_size=cfg.eval_size, aux_samples=cfg.aux_samples,
                                   seed=scenario.seed, match=match_values(scenario, prep))
        except ScenarioError as exc:  # e.g. a client update that used fewer scans than eval_size needs
            rows += [{"attack": s.key, "target": target.name, "status": "error", "error": str(exc)} for s in specs]
            continue
        x, y = prep.task.tensors(prep.cohort, sets.eval_rows)
        fit = {**_fit(prep, target), **null_auc(prep, target.members, y, sets.is_member)}
        train_fn = _recipe(prep, scenario, target_budget(scenario, prep, target.name))
        curves = {}
        for spec in specs:
            row = score_attack(spec, target, sets, x, y, prep=prep, train_fn=train_fn, seed=scenario.seed,
                               delta=cfg.delta, log=log)
            rows.append({**row, **fit})
            if row["status"] == "ok":
                curves[spec.key] = (row.pop("fpr"), row.pop("tpr"), row["auc"])
        if curves:
            roc_figure(curves, out_dir / f"roc_{target.name}.png", title=f"membership · {target.name}")
    atomic_write_text(out_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _fit(prep: Any, target: TargetModel) -> dict[str, float]:
    """Train vs test error of the target: the overfitting gap that membership leakage follows."""
    key = prep.task.primary_metric
    x, y = prep.task.tensors(prep.cohort, target.members)
    train = prep.task.metrics(predict(target.model, x), y)[key]
    test = prep.task.metrics(predict(target.model, prep.x_test), prep.y_test)[key]
    return {f"train_{key}": train, f"test_{key}": test}


def null_auc(prep: Any, members: list[int], y: torch.Tensor, is_member: np.ndarray) -> dict[str, float]:
    """AUC of the loss attack against a model that learned nothing but the members' mean target.

    It carries no membership information, so its distance from 0.5 is what the evaluation set's
    composition alone does (e.g. members further from the mean age than non-members): read each
    attack's AUC against it, not against 0.5. Regression / label targets only (empty otherwise)."""
    if y.ndim != 1:
        return {}
    mean = float(np.mean(prep.task.targets(prep.cohort)[members]))
    error = np.abs(y.double().numpy() - mean)
    return {"null_auc": float(roc_auc_score(is_member.astype(bool), -error))}


def score_attack(spec: PluginSpec, target: TargetModel, sets: MembershipSets, x: torch.Tensor,
                 y: torch.Tensor, *, prep: Any, train_fn: Callable[..., Any] | None, seed: int, delta: float,
                 log: Callable[[str], None]) -> dict[str, Any]:
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
        view = membership_target(attack, target, sets, prep=prep, train_fn=train_fn, seed=seed)
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

