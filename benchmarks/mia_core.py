"""How much do centrally trained brain-age CNNs leak membership? Prints a markdown table.

Synthetic 32^3 cohort (3 sites). Per model: a target trained on 60 subjects (30 scored members +
30 leaked members), scored against 30 non-members; the attacker also holds 30 leaked non-members and
60 further non-members (population; the shadow pool = these 120 subjects, disjoint from the scored 60).
Shadows copy the target's recipe (architecture, Adam, batch 8) and budget: the target's optimizer
steps, but no more passes over their data than the target made. Attacks: calibrated loss threshold,
4-shadow classifier, LiRA with 8 shadows (online: each candidate IN for half; offline with --lira;
both calibrated on the known non-members), white-box gradient features (with / without features
against the non-members' mean gradient). Empirical epsilon: 95% Clopper-Pearson lower bound over
all ROC thresholds (Bonferroni-corrected), delta 1e-5.

    python benchmarks/mia_core.py [--models wide,narrow --lira online,offline --out /tmp/mia_core.md
                                   --roc-dir /tmp]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fedsim.attacks.membership.blackbox import (
    lira_scores,
    one_at_a_time,
    shadow_attack,
    threshold_attack,
)
from fedsim.attacks.membership.metrics import (
    best_empirical_epsilon,
    membership_metrics,
    roc_figure,
)
from fedsim.attacks.membership.whitebox import whitebox_attack
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.scenario import FederationConfig, ModelConfig, TaskConfig
from fedsim.tasks.brain_age import BrainAgeTask
from fedsim.training import predict, train_local

# name -> (channels, Adam lr, target epochs); narrow needs the larger lr to learn at all
MODELS = {"wide": ([8, 16, 32, 64], 1e-3, 60), "narrow": ([4, 8, 16], 3e-3, 60)}
N_EVAL, N_LEAK, N_EXTRA = 30, 30, 60
DELTA = 1e-5


def split(cohort_size: int) -> dict[str, list[int]]:
    """Row indices: members to score, leaked members, non-members to score, leaked non-members, extra."""
    edges = np.cumsum([0, N_EVAL, N_LEAK, N_EVAL, N_LEAK, N_EXTRA])
    assert edges[-1] <= cohort_size
    names = ["eval_in", "leak_in", "eval_out", "leak_out", "extra"]
    return {name: list(range(edges[i], edges[i + 1])) for i, name in enumerate(names)}


def make_trainer(channels: list[int], *, lr: float, epochs: int, max_steps: int | None = None):
    """train(x, y, seed) -> (model, task): the recipe, shared by target and shadows; with `max_steps`,
    min(max_steps, `epochs` passes) optimizer steps (the shadows' budget)."""
    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.nn.Module, BrainAgeTask]:
        task = BrainAgeTask(config=TaskConfig(model=ModelConfig(channels=channels)),
                            target_mean=float(y.mean()), target_std=float(y.std()))
        torch.manual_seed(seed)
        model = task.build_model()
        steps = min(max_steps, int(np.ceil(epochs * len(x) / 8))) if max_steps else None
        config = FederationConfig(local_epochs=epochs, local_steps=steps, batch_size=8, lr=lr, optimizer="adam")
        train_local(model, x, y, task=task, config=config, rng=np.random.default_rng(seed))
        return model, task
    return train


def run_model(name: str, x: torch.Tensor, y: torch.Tensor, rows: dict[str, list[int]],
              lira: list[str]) -> tuple[list[str], dict]:
    channels, lr, epochs = MODELS[name]
    t0 = time.time()
    members = rows["eval_in"] + rows["leak_in"]
    target, task = make_trainer(channels, lr=lr, epochs=epochs)(x[members], y[members], 0)
    shadow_train = make_trainer(channels, lr=lr, epochs=epochs, max_steps=epochs * (len(members) // 8))

    def train_fn(xs: torch.Tensor, ys: torch.Tensor, seed: int):
        model = shadow_train(xs, ys, seed)[0]
        return lambda q: predict(model, q)

    def target_predict(q: torch.Tensor) -> torch.Tensor:
        return predict(target, q)

    def mae(idx: list[int]) -> float:
        return float((target_predict(x[idx]) - y[idx]).abs().mean())

    train_mae, test_mae = mae(members), mae(rows["eval_out"] + rows["leak_out"])
    print(f"[{name}] target trained in {time.time() - t0:.0f}s: train MAE {train_mae:.2f}, test MAE {test_mae:.2f}",
          flush=True)
    ev = rows["eval_in"] + rows["eval_out"]
    is_member = np.r_[np.ones(N_EVAL), np.zeros(N_EVAL)]
    aux_idx = rows["leak_in"] + rows["leak_out"] + rows["extra"]
    aux_is_member = np.r_[np.ones(N_LEAK, dtype=bool), np.zeros(N_LEAK + N_EXTRA, dtype=bool)]
    leaked = dict(aux_member_x=x[rows["leak_in"]], aux_member_y=y[rows["leak_in"]],
                  aux_non_x=x[rows["leak_out"]], aux_non_y=y[rows["leak_out"]])
    population = (x[rows["extra"]], y[rows["extra"]])

    def lira_run(online: bool):
        return lambda: lira_scores(one_at_a_time(train_fn), target_predict, x[ev], y[ev], aux_x=x[aux_idx],
                                   aux_y=y[aux_idx], aux_is_member=aux_is_member, n_shadows=8, online=online)

    attacks = {
        "threshold": lambda: threshold_attack(target_predict, x[ev], y[ev], **leaked),
        "shadow (4)": lambda: shadow_attack(one_at_a_time(train_fn), target_predict, x[ev], y[ev], aux_x=x[aux_idx],
                                            aux_y=y[aux_idx], n_shadows=4),
        **{f"LiRA {mode} (8)": lira_run(mode == "online") for mode in lira},
        "white-box": lambda: whitebox_attack(target, task.loss, x[ev], y[ev], **leaked, population=population),
        "white-box + reference": lambda: whitebox_attack(target, task.loss, x[ev], y[ev], **leaked,
                                                         population=population, reference=True),
    }
    lines, curves = [], {}
    for attack, run in attacks.items():
        t = time.time()
        scores = run()
        m = membership_metrics(scores, is_member)
        eps = best_empirical_epsilon(scores, is_member, delta=DELTA)
        curves[attack] = (m["fpr"], m["tpr"], m["auc"])
        print(f"[{name}] {attack}: AUC {m['auc']:.3f} in {time.time() - t:.0f}s", flush=True)
        lines.append(f"| {name} {channels} | {train_mae:.2f} | {test_mae:.2f} | {attack} | {m['auc']:.3f} | "
                     f"{m['balanced_accuracy']:.3f} | {m['tpr_at_1pct_fpr']:.3f} | {eps:.2f} |")
    print(f"[{name}] total {time.time() - t0:.0f}s", flush=True)
    return lines, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="wide,narrow")
    parser.add_argument("--lira", default="online", help="LiRA modes to run: online, offline or both")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mia_core.md"))
    parser.add_argument("--roc-dir", type=Path, default=None, help="write one log-log ROC png per model here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    rows = split(180)
    cohort = load_cohort(CohortSpec(n_subjects=180, shape=32, n_sites=3, seed=0))
    task = BrainAgeTask(config=TaskConfig(), target_mean=0.0)
    x, y = task.tensors(cohort, list(range(180)))
    baseline = float((y[60:120] - y[:60].mean()).abs().mean())  # the targets' test rows
    print(f"cohort ready in {time.time() - t0:.0f}s; predict-the-mean MAE {baseline:.2f}", flush=True)
    table = ["| model | train MAE | test MAE | attack | AUC | bal. acc | TPR@1%FPR | eps LB (δ=1e-5) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        lines, curves = run_model(name, x, y, rows, args.lira.split(","))
        table += lines
        if args.roc_dir:
            roc_figure(curves, args.roc_dir / f"mia_core_{name}.png", f"membership, {name} brain-age CNN")
    text = "\n".join(table) + (f"\n\n{N_EVAL} members / {N_EVAL} non-members scored; predict-the-mean MAE "
                               f"{baseline:.2f}; total {time.time() - t0:.0f}s\n")
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
