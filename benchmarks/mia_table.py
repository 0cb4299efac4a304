"""Membership inference by target and attack, over several seeds; prints a markdown table.

Runs a membership scenario (default scenarios/mia_brain_age.yaml) once per seed through fedsim
(Flower + Ray, centralized reference included) and reports mean ± spread of AUC, balanced accuracy,
TPR at 1% / 0.1% FPR and the target's train / test error for every (target, attack).

    python benchmarks/mia_table.py [--scenario scenarios/mia_brain_age.yaml --seeds 0,1,2
                                    --set federation.rounds=5 ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from fedsim.runner import run_scenario
from fedsim.scenario import load_scenario

COLUMNS = ("auc", "balanced_accuracy", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "empirical_epsilon")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="scenarios/mia_brain_age.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    results: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    key = "mae"
    t0 = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        scenario = load_scenario(args.scenario, [*args.overrides, f"seed={seed}"])
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_scenario(scenario, out_dir=Path(tmp), log=lambda _: None).summary
        key = summary["primary_metric"]
        for row in summary["membership"]:
            if row.get("status") == "ok":
                cell = results[(row["target"], row["attack"])]
                for col in (*COLUMNS, f"train_{key}", f"test_{key}"):
                    cell[col].append(float(row[col]))
    print(f"\n{args.scenario} {' '.join(args.overrides)}; seeds {args.seeds}; mean ± sd; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(f"| target | attack | AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | empirical ε ≥ | train {key} | test {key} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (target, attack), cell in sorted(results.items()):
        cols = " | ".join(_cell(cell[c]) for c in (*COLUMNS, f"train_{key}", f"test_{key}"))
        print(f"| {target} | {attack} | {cols} |")


if __name__ == "__main__":
    main()
