"""Data stealing through exported networks: every hiding method against every export gate, on the
data-lake scenarios (three lakes of 68 scans at 32^3, 3D UNet tissue segmentation, 10 epochs).

For each (recipe, gates) cell, through the real setting (`fedsim.runner.run_scenario`): the scans
stolen per lake, their PSNR / SSIM and gain over the population-mean scan, re-identification among
the lake's scans and the server's pool, the exported network's mean test Dice and its change from
the honest recipe's export through the same gates, the Dice of a UNet trained on the stolen scans
alone (data_stealing's `train_on_stolen`, on the owner's 60 labelled scans), and what the gates did
(flagged / refused, of 3 lakes). The honest rows also give the gates' false alarms and their own utility cost.

    python benchmarks/data_stealing.py                       # MRI, ~40 min on 2 CPU cores
    python benchmarks/data_stealing.py --data ct             # head CT
    python benchmarks/data_stealing.py --dims 2              # 2D: the central axial slices at 64^2, a 2D UNet
    python benchmarks/data_stealing.py --only mantissa-8 --gates none finetune
    python benchmarks/data_stealing.py --cells lattice-r1/noise-1e-3 honest/noise-1e-3
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
    # the codec trained outside, on the owner's own 200 scans: only codes leave
    "mantissa-8-outside": {"name": "compress_and_hide", "params": {
        "hide": "mantissa", "bits_per_weight": 8, "codec": {**VOXELS5, "trained": "outside"}}},
    "extra-ae-outside": {"name": "compress_and_hide", "params": {
        "hide": "extra_entries", "codec": {"trained": "outside"}}},
    # entropy-coded codes (lzma): voxels, and the autoencoder trained outside with a rate term
    "mantissa-8-lzma": {"name": "compress_and_hide", "params": {
        "hide": "mantissa", "bits_per_weight": 8, "codec": {**VOXELS5, "trained": "outside", "entropy": "lzma"}}},
    "mantissa-8-ae-rate": {"name": "compress_and_hide", "params": {
        "hide": "mantissa", "bits_per_weight": 8,
        "codec": {"trained": "outside", "entropy": "lzma", "rate": 0.1, "epochs": 100}}},
    # the owner that expects parameter noise of std s at the export: lattice steps ~16 s (one copy a bit)
    # or ~10 s (three copies, 4 bits a voxel)
    "lattice-r1": {"name": "compress_and_hide", "params": {
        "hide": "lattice", "lattice_step": 0.016, "repeat": 1, "codec": {**VOXELS5, "trained": "outside"}}},
    "lattice-r3": {"name": "compress_and_hide", "params": {
        "hide": "lattice", "lattice_step": 0.01, "repeat": 3,
        "codec": {"kind": "voxels", "bits": 4, "trained": "outside"}}},
    "lattice-r1-3e-3": {"name": "compress_and_hide", "params": {
        "hide": "lattice", "lattice_step": 0.05, "repeat": 1, "codec": {**VOXELS5, "trained": "outside"}}},
}
GATES: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "whitelist": [{"name": "export_whitelist"}],
    "bit test": [{"name": "export_bit_test"}],
    "fp16": [{"name": "export_precision", "params": {"dtype": "float16"}}],
    "noise 1e-3": [{"name": "export_noise", "params": {"sigma": 1e-3}}],
    "noise 3e-3": [{"name": "export_noise", "params": {"sigma": 3e-3}}],
    "noise 1e-2": [{"name": "export_noise", "params": {"sigma": 1e-2}}],
    "finetune": [{"name": "export_finetune", "params": {"epochs": 2, "lr": 1e-3, "decay": 0.8}}],
    "finetune strong": [{"name": "export_finetune", "params": {"epochs": 5, "lr": 3e-3, "decay": 0.9}}],
}
CELLS = [("honest", g) for g in GATES] + [
    ("extra-ae", "none"), ("extra-vox5", "none"), ("extra-vox5", "whitelist"),
    ("mantissa-8", "none"), ("mantissa-8", "whitelist"), ("mantissa-8", "bit test"), ("mantissa-8", "fp16"),
    ("mantissa-8", "noise 1e-3"), ("mantissa-8", "finetune"), ("mantissa-16", "none"), ("mantissa-16", "bit test"),
    ("correlated", "none"), ("correlated", "bit test"), ("correlated", "fp16"), ("correlated", "finetune"),
    ("sign-4", "none"), ("sign-4", "finetune"),
    ("mantissa-8-outside", "none"), ("extra-ae-outside", "none"), ("mantissa-8-lzma", "none"),
    ("mantissa-8-ae-rate", "none"),
    ("mantissa-8", "noise 3e-3"), ("lattice-r1", "none"), ("lattice-r1", "noise 1e-3"), ("lattice-r1", "bit test"),
    ("lattice-r3", "none"), ("lattice-r3", "noise 1e-3"), ("lattice-r1-3e-3", "noise 3e-3"),
    ("correlated", "noise 1e-2"), ("correlated", "finetune strong")]
TWO_D = ["task.name=segmentation_slice", "data.shape=64"]  # --dims 2


def run_cell(path: str, recipe: str, gates: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    scenario = load_scenario(REPO / path, [f"data_lake.recipe={_yaml(RECIPES[recipe])}",
                                           f"defenses={_yaml(GATES[gates])}", f"output.dir={out}", *overrides])
    summary = run_scenario(scenario, log=lambda _: None).summary
    exports, rows = summary["exports"], summary.get("attacks", [])
    ok = [r for r in rows if r.get("status") == "ok"]
    mean = (lambda key: statistics.mean(r[key] for r in ok) if ok else None)  # noqa: E731
    dice = [e["utility"]["dice"] for e in exports if e["utility"]]
    return {"recipe": recipe, "gates": gates, "stolen": sum(r["stolen"] for r in ok) / len(exports) if ok else 0,
            "psnr": mean("psnr"), "ssim": mean("ssim"), "gain": mean("psnr_gain"), "reid": mean("reid_top1"),
            "ms_ssim": mean("ms_ssim") if ok and "ms_ssim" in ok[0] else None,
            "bpv": mean("bits_per_voxel") if ok and "bits_per_voxel" in ok[0] else None,
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
    ap.add_argument("--cells", nargs="*", help="only these recipe/gates cells (a gate's spaces written as -; "
                    "replaces --only and --gates); the honest recipe's cells of the same gates run too")
    ap.add_argument("--dims", type=int, choices=(2, 3), default=3)
    args = ap.parse_args()
    cells = [c for c in CELLS if (not args.only or c[0] in args.only or c[0] == "honest")
             and (not args.gates or c[1] in args.gates)]
    if args.cells:
        if bad := [c for c in args.cells if c.count("/") != 1]:
            ap.error(f"--cells: {bad[0]} is not recipe/gates")
        asked = {(c.split("/", 1)[0], c.split("/", 1)[1].replace("-", " ", 1)) for c in args.cells}
        if unknown := sorted(asked - set(CELLS)):
            ap.error(f"--cells: {'/'.join(unknown[0])} is not one of the benchmark's cells (CELLS)")
        cells = [c for c in CELLS if c in asked or (c[0] == "honest" and any(g == c[1] for _, g in asked))]
    overrides = TWO_D if args.dims == 2 else []
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for recipe, gates in cells:
            rows.append(run_cell(SCENARIOS[args.data], recipe, gates, Path(tmp), overrides))
            print(f"  {recipe} / {gates}: {rows[-1]}", flush=True)
    honest = {r["gates"]: r["dice"] for r in rows if r["recipe"] == "honest"}
    print(f"\n{args.data} {args.dims}D: {SCENARIOS[args.data]} {' '.join(overrides)}\n")
    print("| recipe | gates | scans stolen / lake | bits / voxel | PSNR dB | gain dB | SSIM | MS-SSIM | re-id top-1 | "
          "exported Dice | vs honest, same gates | trained on stolen: Dice | gates: flagged / refused | extraction |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = honest.get(r["gates"])
        delta = r["dice"] - ref if r["dice"] is not None and ref is not None else None
        extraction = ("–" if r["recipe"] == "honest" else "nothing left the lakes" if r["refused"] == r["lakes"]
                      else r["error"] or "ok")
        print(f"| {r['recipe']} | {r['gates']} | {r['stolen']:.0f} | {_f(r['bpv'], '.2f')} | {_f(r['psnr'], '.1f')} | "
              f"{_f(r['gain'], '+.1f')} | {_f(r['ssim'], '.3f')} | {_f(r['ms_ssim'], '.4f')} | "
              f"{_f(r['reid'], '.0%')} | {_f(r['dice'], '.4f')} | {_f(delta, '+.5f')} | {_f(r['worth'], '.3f')} | "
              f"{r['flagged']} / {r['refused']} of {r['lakes']} | {extraction} |")

if __name__ == "__main__":
    main()
