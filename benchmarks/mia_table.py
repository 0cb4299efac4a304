"""Membership inference by target and attack, over several seeds; prints a markdown table.

Runs a membership scenario (default scenarios/mia_brain_age.yaml) once per seed through fedsim
(Flower + Ray, centralized reference included) and reports mean ± spread of AUC, balanced accuracy,
TPR at 1% / 0.1% FPR and the target's train / test error for every (target, attack).

    python benchmarks/mia_table.py [--scenario scenarios/mia_brain_age.yaml --seeds 0,1,2
                                    --set federation.rounds=5 ... --keep runs/mia_table]
    python benchmarks/mia_table.py --from runs/mia_table   # re-tabulate kept runs (after `fedsim attack`)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fedsim.loading import load_scenario
from fedsim.runner import run_scenario

COLUMNS = ("auc", "null_auc", "balanced_accuracy", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "empirical_epsilon")


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _runs(scenario_path: str, seeds: str, overrides: list[str], keep: Path | None):
    """Run the scenario once per seed; yield each summary (the run folder kept under `keep`)."""
    for seed in (int(s) for s in seeds.split(",")):
        scenario = load_scenario(scenario_path, [*overrides, f"seed={seed}"])
        if keep is not None:
            yield run_scenario(scenario, out_dir=keep / f"seed{seed}", log=lambda _: None).summary
            continue
        with tempfile.TemporaryDirectory() as tmp:
            yield run_scenario(scenario, out_dir=Path(tmp), log=lambda _: None).summary


def _kept(folder: Path):
    """The summaries of runs kept by --keep (newest run per seed folder)."""
    for seed_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
        newest = sorted(seed_dir.glob("*/*/summary.json"))[-1:]
        yield from (json.loads(path.read_text()) for path in newest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="scenarios/mia_brain_age.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--keep", type=Path, help="keep the run folders here (to rescore with `fedsim attack`)")
    p.add_argument("--from", dest="source", type=Path, help="tabulate the runs kept in this folder; run nothing")
    args = p.parse_args()
    results: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    key = "mae"
    t0 = time.perf_counter()
    for summary in _kept(args.source) if args.source else _runs(args.scenario, args.seeds, args.overrides, args.keep):
        key = summary["primary_metric"]
        for row in summary["membership"]:
            if row.get("status") == "ok":
                cell = results[(row["target"], row["attack"])]
                for col in (*COLUMNS, f"train_{key}", f"test_{key}"):
                    if row.get(col) is not None:
                        cell[col].append(float(row[col]))
    print(f"\n{args.source or args.scenario} {' '.join(args.overrides)}; seeds {args.seeds}; mean ± sd; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| target | attack | AUC | null AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | empirical ε ≥ "
          f"| train {key} | test {key} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (target, attack), cell in sorted(results.items()):
        cols = " | ".join(_cell(cell[c]) for c in (*COLUMNS, f"train_{key}", f"test_{key}"))
        print(f"| {target} | {attack} | {cols} |")


if __name__ == "__main__":
    main()
