"""Data stealing through exported networks: every hiding method against every export gate, on the
data-lake scenarios (three lakes of 68 scans at 32^3, 3D UNet tissue segmentation, 10 epochs).

For each (recipe, gates) cell, through the real setting (`fedsim.runner.run_scenario`): the scans
stolen per lake, their PSNR / SSIM and gain over the population-mean scan, re-identification among
the lake's scans and the server's pool, the exported network's mean test Dice and its change from
the honest recipe's export through the same gates, the Dice of a UNet trained on the stolen scans
alone (data_stealing's `train_on_stolen`, on the owner's 60 labelled scans), and what the gates did
(flagged / refused, of 3 lakes). The honest rows also give the gates' false alarms and their own utility cost.

    python benchmarks/data_stealing.py                       # MRI, ~15 min on 2 CPU cores
    python benchmarks/data_stealing.py --data ct             # head CT
    python benchmarks/data_stealing.py --only mantissa-8 --gates none finetune
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fedsim.loading import load_scenario
from fedsim.runner import run_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = {"mri": "scenarios/data_lake_stealing.yaml", "ct": "scenarios/data_lake_stealing_ct.yaml"}
HONEST = {"name": "train_agreed"}
VOXELS5 = {"kind": "voxels", "bits": 5}
RECIPES: dict[str, dict[str, Any]] = {
    "honest": HONEST,
    "extra-ae": {"name": "compress_and_hide", "params": {"hide": "extra_entries"}},  # autoencoder, 4 bits/voxel
    "extra-vox5": {"name": "compress_and_hide", "params": {"hide": "extra_entries", "codec": VOXELS5}},
    "mantissa-8": {"name": "compress_and_hide", "params": {"hide": "mantissa", "bits_per_weight": 8,
                                                           "codec": VOXELS5}},
    "mantissa-16": {"name": "compress_and_hide", "params": {"hide": "mantissa", "bits_per_weight": 16,
                                                            "codec": VOXELS5}},
    "correlated": {"name": "compress_and_hide", "params": {"hide": "correlated", "weight": 1.0}},
    "sign-4": {"name": "compress_and_hide", "params": {"hide": "sign", "weight": 10.0, "sign_bits": 4}},
}
GATES: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "whitelist": [{"name": "export_whitelist"}],
    "bit test": [{"name": "export_bit_test"}],
    "fp16": [{"name": "export_precision", "params": {"dtype": "float16"}}],
    "noise 1e-3": [{"name": "export_noise", "params": {"sigma": 1e-3}}],
    "finetune": [{"name": "export_finetune", "params": {"epochs": 2, "lr": 1e-3, "decay": 0.8}}],
}
CELLS = [("honest", g) for g in GATES] + [
    ("extra-ae", "none"), ("extra-vox5", "none"), ("extra-vox5", "whitelist"),
    ("mantissa-8", "none"), ("mantissa-8", "whitelist"), ("mantissa-8", "bit test"), ("mantissa-8", "fp16"),
    ("mantissa-8", "noise 1e-3"), ("mantissa-8", "finetune"), ("mantissa-16", "none"), ("mantissa-16", "bit test"),
    ("correlated", "none"), ("correlated", "bit test"), ("correlated", "fp16"), ("correlated", "finetune"),
    ("sign-4", "none"), ("sign-4", "finetune")]


def run_cell(path: str, recipe: str, gates: str, out: Path) -> dict[str, Any]:
    scenario = load_scenario(REPO / path, [f"data_lake.recipe={_yaml(RECIPES[recipe])}",
                                           f"defenses={_yaml(GATES[gates])}", f"output.dir={out}"])
    summary = run_scenario(scenario, log=lambda _: None).summary
    exports, rows = summary["exports"], summary.get("attacks", [])
    ok = [r for r in rows if r.get("status") == "ok"]
    mean = (lambda key: statistics.mean(r[key] for r in ok) if ok else None)  # noqa: E731
    dice = [e["utility"]["dice"] for e in exports if e["utility"]]
    return {"recipe": recipe, "gates": gates, "stolen": sum(r["stolen"] for r in ok) / len(exports) if ok else 0,
            "psnr": mean("psnr"), "ssim": mean("ssim"), "gain": mean("psnr_gain"), "reid": mean("reid_top1"),
            "dice": statistics.mean(dice) if dice else None, "flagged": sum(bool(e["flags"]) for e in exports),
            "refused": sum(bool(e["refused"]) for e in exports), "lakes": len(exports),
            "worth": mean("stolen_trained_dice") if ok and "stolen_trained_dice" in ok[0] else None,
            "error": next((r.get("error") for r in rows if r.get("status") == "error"), None)}


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=sorted(SCENARIOS), default="mri")
    ap.add_argument("--only", nargs="*", help="recipes to run (honest always runs: the utility reference)")
    ap.add_argument("--gates", nargs="*", help="only these gates (names of GATES)")
    args = ap.parse_args()
    cells = [c for c in CELLS if (not args.only or c[0] in args.only or c[0] == "honest")
             and (not args.gates or c[1] in args.gates)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for recipe, gates in cells:
            rows.append(run_cell(SCENARIOS[args.data], recipe, gates, Path(tmp)))
            print(f"  {recipe} / {gates}: {rows[-1]}", flush=True)
    honest = {r["gates"]: r["dice"] for r in rows if r["recipe"] == "honest"}
    print(f"\n{args.data}: {SCENARIOS[args.data]}\n")
    print("| recipe | gates | scans stolen / lake | PSNR dB | gain dB | SSIM | re-id top-1 | exported Dice | "
          "vs honest, same gates | trained on stolen: Dice | gates: flagged / refused | extraction |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = honest.get(r["gates"])
        delta = r["dice"] - ref if r["dice"] is not None and ref is not None else None
        extraction = ("–" if r["recipe"] == "honest" else "nothing left the lakes" if r["refused"] == r["lakes"]
                      else r["error"] or "ok")
        print(f"| {r['recipe']} | {r['gates']} | {r['stolen']:.0f} | {_f(r['psnr'], '.1f')} | "
              f"{_f(r['gain'], '+.1f')} | {_f(r['ssim'], '.3f')} | {_f(r['reid'], '.0%')} | {_f(r['dice'], '.4f')} | "
              f"{_f(delta, '+.5f')} | {_f(r['worth'], '.3f')} | {r['flagged']} / {r['refused']} of {r['lakes']} | "
              f"{extraction} |")

if __name__ == "__main__":
    main()
