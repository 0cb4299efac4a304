"""Split-inference inversion by the depth of the cut: what the untrusted server rebuilds from the
features a hospital sends (setting split_inference, attack split_inversion: He et al.'s white-box
regularised maximum likelihood), on scenarios/split_inference_inversion.yaml (2D central slices at
64^2, a brain-age CNN [16,32,64,64] trained by the provider on 400 scans of its own, 3 hospitals x
8 slices). Per split: the values sent per slice, the mean PSNR / SSIM / MS-SSIM, gain over the
population-mean slice, the share below He et al.'s "unrecognisable" SSIM 0.3, re-identification.

    python benchmarks/split_inversion.py                        # splits 1-4, ~5 min on 2 CPU cores
    python benchmarks/split_inversion.py --splits 1 2 3 --sigmas 0 0.02 0.05   # model perturbation x depth
    python benchmarks/split_inversion.py --splits 1 2 3 --attacks 'white box' 'inverse, training set' \
        'inverse, same population' 'inverse, noise'                          # attack x query set x depth
    python benchmarks/split_inversion.py --splits 2 3 --tv 0.01 --iterations 1000
    python benchmarks/split_inversion.py --splits 1 2 3 --convs 2 --set 'task.model.channels=[16,32,64]' \
        --attacks 'white box' shadow                          # He et al.'s 6-conv CNN, cut after conv 2 / 4 / 6
    python benchmarks/split_inversion.py --splits 1 2 --defense split_feature_dropout --sigmas 0 0.3 0.6
    python benchmarks/split_inversion.py --splits 1 2 3 --attacks 'white box' 'inverse, same population' \
        --set task.name=brain_age --set data.shape=32 --set 'task.model.channels=[8,16,32,64]' \
        --set split_inference.train_scans=200 --set split_inference.epochs=5 --set split_inference.scans=4  # 3D
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from fedsim.loading import load_scenario
from fedsim.runner import run_scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios/split_inference_inversion.yaml"


ATTACKS = {  # name -> the attack spec (white box, and the inverse network with He et al.'s three query sets)
    "white box": lambda params: {"name": "split_inversion", "params": params},
    "inverse, training set": lambda _: {"name": "split_inverse_network", "params": {"queries": "training"}},
    "inverse, same population": lambda _: {"name": "split_inverse_network", "params": {"queries": "population"}},
    "inverse, noise": lambda _: {"name": "split_inverse_network", "params": {"queries": "noise"}},
    "shadow": lambda params: {"name": "split_shadow_inversion", "params": params},  # query-free: no hospital weights
}
DEFENSES = {"split_model_noise": "sigma", "split_feature_noise": "sigma", "split_feature_dropout": "p"}


def run_split(split: int, sigma: float, attacks: list[str], params: dict, out: Path, *, defense: str,
              overrides: list[str]) -> list[dict]:
    specs = [{**ATTACKS[a](params), "label": f"a{i}"} for i, a in enumerate(attacks)]
    defenses = [{"name": defense, "params": {DEFENSES[defense]: sigma}}] if sigma else []
    scenario = load_scenario(SCENARIO, [*overrides, f"split_inference.split={split}", f"attacks={json.dumps(specs)}",
                                        f"defenses={json.dumps(defenses)}", f"output.dir={out}"])
    summary = run_scenario(scenario, log=lambda _: None).summary
    found = []
    for i, attack in enumerate(attacks):
        rows = [r for r in summary["attacks"] if r.get("status") == "ok" and r["attack"] == f"a{i}"]
        mean = (lambda key, rows=rows: statistics.mean(r[key] for r in rows)  # noqa: E731
                if rows and key in rows[0] else float("nan"))
        found.append({"split": split, "sigma": sigma, "attack": attack,
                      "values": summary["sent"][0]["values_per_scan"], "voxels": summary["sent"][0]["voxels_per_scan"],
                      "psnr": mean("psnr"), "gain": mean("psnr_gain"), "ssim": mean("ssim"),
                      "ms_ssim": mean("ms_ssim"), "reid": mean("reid_top1"), "unrecognisable": mean("unrecognisable"),
                      "mae": summary["final"]["mae"], "scored": len(rows)})
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", nargs="*", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--tv", type=float, default=0.0)
    ap.add_argument("--sigmas", nargs="*", type=float, default=[0.0],
                    help="the defense's strength: sigma of split_model_noise (on the hospital-side weights) or "
                    "split_feature_noise, p of split_feature_dropout (0: none)")
    ap.add_argument("--defense", default="split_model_noise", choices=sorted(DEFENSES))
    ap.add_argument("--attacks", nargs="*", default=["white box"], choices=sorted(ATTACKS))
    ap.add_argument("--convs", type=int, default=1, help="convolutions per block (2: He et al.'s VGG-style CNN)")
    ap.add_argument("--set", action="append", default=[], help="a scenario override, e.g. data.shape=32")
    args = ap.parse_args()
    overrides = [*args.set, *([f"task.model.convs={args.convs}"] if args.convs != 1 else [])]
    params = {"iterations": args.iterations, "lr": args.lr, "tv": args.tv}
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for sigma in args.sigmas:
            for split in args.splits:
                rows += run_split(split, sigma, args.attacks, params, Path(tmp), defense=args.defense,
                                  overrides=overrides)
                print("".join(f"  {r}\n" for r in rows[-len(args.attacks):]), end="", flush=True)
    print(f"\nwhite box and shadow: {params}; inverse networks: 400 queries, 30 epochs; shadow: 200 labelled "
          f"population scans, 10 epochs; defense {args.defense}; overrides {overrides}\n")
    print(f"| {DEFENSES[args.defense]} | split after block | attack | values sent / pixels | test MAE (years) | "
          "PSNR dB | gain dB | SSIM | MS-SSIM | SSIM < 0.3 | re-id top-1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sigma']:g} | {r['split']} | {r['attack']} | {r['values']} / {r['voxels']} | {r['mae']:.2f} | "
              f"{r['psnr']:.1f} | "
              f"{r['gain']:+.1f} | "
              f"{r['ssim']:.3f} | {r['ms_ssim']:.4f} | {r['unrecognisable']:.0%} | {r['reid']:.0%} |")


if __name__ == "__main__":
    main()
