"""Membership AUC averaged over many evaluation splits of recorded runs; prints a markdown table.

One balanced evaluation set of 30 + 30 scans moves AUC by about ±0.08 on its own, more than the gap
between two attacks. This re-draws the evaluation and leaked sets `--splits` times on the targets a
run already trained (final global model, kept centralized reference, every recorded update of the
membership client) and scores the attacks that need no shadow models on each, through the same
plug-in code a run uses. Shadow attacks (mia_shadow, mia_lira) retrain per split and are left out.

    python benchmarks/mia_table.py --keep runs/mia_table --set 'server.targets.rounds=[1,8,15]'
    python benchmarks/mia_splits.py runs/mia_table/seed*/mia_brain_age/* [--splits 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedsim.attacks.membership.config import MembershipConfig
from fedsim.attacks.membership.evaluation import (
    build_target,
    match_values,
    membership_sets,
    nonmember_pool,
    null_auc,
    score_attack,
)
from fedsim.experiment import prepare
from fedsim.loading import load_scenario
from fedsim.run_folder import RunFolder
from fedsim.scenario import PluginSpec

ATTACKS = {
    "centralized": ["mia_loss_threshold", "mia_whitebox"],
    "global_model": ["mia_loss_threshold", "mia_whitebox"],
    "client_update": ["mia_loss_threshold", "mia_whitebox", "mia_update_alignment", "mia_update_loss_drop"],
}


def _rounds(run: Path, client: int) -> list[int]:
    return sorted(int(d.name[5:8]) for d in (run / "observations").glob(f"round*_client{client:03d}"))


def score_run(run: Path, splits: int) -> dict[tuple[str, str], list[float]]:
    """{(target, attack): [AUC per split]} for one run folder, with "null" as the null AUC."""
    scenario = load_scenario(run / "scenario.yaml")
    experiment = prepare(scenario)
    cfg, out = MembershipConfig(**scenario.sections["membership"]), defaultdict(list)
    jobs = [(name, cfg.round) for name in cfg.targets if name != "client_update"]
    jobs += [("client_update", r) for r in _rounds(run, cfg.client)] if "client_update" in cfg.targets else []
    for name, rnd in jobs:
        target = build_target(name, RunFolder(run), experiment, cfg.model_copy(update={"round": rnd}),
                              log=lambda _: None)
        if target is None:
            continue
        label = f"{name} r{rnd}" if name == "client_update" else name
        match = match_values(cfg, experiment)
        for split in range(splits):
            sets = membership_sets(target.members, nonmember_pool(experiment), eval_size=cfg.eval_size,
                                   aux_samples=cfg.aux_samples, seed=split, match=match)
            x, y = experiment.tensors(sets.eval_rows)
            out[(label, "null")].append(null_auc(experiment, target.members, y, sets.is_member).get("null_auc", np.nan))
            for attack in ATTACKS[name]:
                row = score_attack(PluginSpec(name=attack), target, sets, x, y, experiment=experiment, shadows=None,
                                   seed=split, delta=cfg.delta, log=lambda _: None)
                out[(label, attack)].append(row["auc"] if row["status"] == "ok" else np.nan)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>/<timestamp>)")
    p.add_argument("--splits", type=int, default=10)
    args = p.parse_args()
    t0 = time.perf_counter()
    per_run = [score_run(run, args.splits) for run in args.runs]
    print(f"\n{len(args.runs)} run(s) x {args.splits} evaluation splits; AUC mean over splits, then mean ± sd "
          f"over runs; {time.perf_counter() - t0:.0f} s\n")
    print("| target | attack | AUC | sd over splits | wins vs threshold |")
    print("|---|---|---|---|---|")
    for key in sorted({k for r in per_run for k in r}):
        means = [float(np.nanmean(r[key])) for r in per_run if key in r]
        within = statistics.fmean(float(np.nanstd(r[key])) for r in per_run if key in r)
        wins = [np.mean(np.asarray(r[key]) >= np.asarray(r[(key[0], "mia_loss_threshold")]))
                for r in per_run if key in r and (key[0], "mia_loss_threshold") in r]
        spread = f" ± {statistics.stdev(means):.3f}" if len(means) > 1 else ""
        cell = f"{statistics.fmean(means):.3f}{spread}"
        print(f"| {key[0]} | {key[1]} | {cell} | {within:.3f} | {100 * statistics.fmean(wins):.0f}% |")


if __name__ == "__main__":
    main()
