"""The privacy–utility table: every built-in defense at 2–3 strengths on the brain-age task.

Each defense runs on two scenarios, through the real engine (`fedsim.sweep`):
- utility and membership: scenarios/defense_brain_age.yaml (test MAE; membership AUC and TPR at
  1% FPR of the loss-threshold attack on the global model and of gradient alignment on client 0's
  round-1 update; DP-SGD's epsilon; client seconds per round);
- inversion: scenarios/gia_fedsgd.yaml cut to one round (a malicious server asks client 0 for a
  batch-1 gradient and client 1 for a batch-8 one; Inverting Gradients, DLG and the learned
  inversion (the honest-but-curious server's map, fitted on 600 scans of its own x 2), plain and
  adaptive (fitted through its own copy of the defense), rebuild the scans): PSNR gain over the
  population-mean image and re-identification rate, averaged over both clients.

    python benchmarks/defense_table.py            # ~35-50 min on 2 CPU cores (~15 s a row of it the learned fit)
    python benchmarks/defense_table.py --quick    # one strength per defense
    python benchmarks/defense_table.py --only none dp_sgd
    python benchmarks/defense_table.py --inversion-only   # the inversion columns alone
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedsim.sweep import expand, run_sweep
from fedsim.sweep_figure import privacy_utility_figure

REPO = Path(__file__).resolve().parents[1]
STRENGTHS: list[tuple[str, str, list[dict[str, Any]]]] = [  # (defense, strength label, defenses list)
    ("none", "-", []),
    ("dp_sgd", "z=0.5", [{"name": "dp_sgd", "params": {"noise_multiplier": 0.5, "max_grad_norm": 1.0}}]),
    ("dp_sgd", "z=1", [{"name": "dp_sgd", "params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}]),
    ("dp_sgd", "z=2", [{"name": "dp_sgd", "params": {"noise_multiplier": 2.0, "max_grad_norm": 1.0}}]),
    # the brain-age CNN's round-1 change has L2 norm ~1.2 over 73k weights: noise std z*C per weight
    ("clip_update", "C=1,z=0.003", [{"name": "clip_update", "params": {"max_norm": 1.0, "noise_multiplier": 0.003}}]),
    ("clip_update", "C=1,z=0.01", [{"name": "clip_update", "params": {"max_norm": 1.0, "noise_multiplier": 0.01}}]),
    ("model_noise", "σ=0.02", [{"name": "model_noise", "params": {"sigma": 0.02}}]),
    ("model_noise", "σ=0.05", [{"name": "model_noise", "params": {"sigma": 0.05}}]),
    # absolute sigma is tiny beside a years^2 loss's gradients: noise relative to the update's p95 too
    ("model_noise", "σ0=0.1·p95", [{"name": "model_noise", "params": {"sigma0": 0.1}}]),
    ("model_noise", "σ0=1·p95", [{"name": "model_noise", "params": {"sigma0": 1.0}}]),
    ("prune", "keep 10%", [{"name": "prune", "params": {"keep": 0.1}}]),
    ("prune", "keep 1%", [{"name": "prune", "params": {"keep": 0.01}}]),
    ("label_noise", "5 y", [{"name": "label_noise", "params": {"scale": 5.0}}]),
    ("label_noise", "15 y", [{"name": "label_noise", "params": {"scale": 15.0}}]),
    ("secure_aggregation", "-", [{"name": "secure_aggregation"}]),
]
QUICK = {"-", "z=1", "C=1,z=0.01", "σ=0.02", "σ=0.05", "keep 10%", "5 y"}
INVERSION = ["federation.rounds=1",
             "attacks=[{name: inverting_gradients, params: {iterations: 100, objective: cosine, lr: 0.03, tv: 0.0001}},"
             " {name: dlg, params: {iterations: 100}},"
             " {name: learned_inversion, params: {aux_subjects: 600, augment: 2}},"
             " {name: adaptive_learned_inversion, params: {aux_subjects: 600, augment: 2}}]"]


def _runs(path: str, configs: list[tuple[str, str, list]], overrides: list[str], out: Path) -> list[dict]:
    points = expand(REPO / path, grid={"defenses": [c[2] for c in configs]}, overrides=overrides)
    _, rows = run_sweep(points, out_dir=out, log=print)
    return [{"defense": d, "strength": s, **row} for (d, s, _), row in zip(configs, rows, strict=True)]


def _get(row: dict, key: str) -> float | None:
    value = row.get(key)
    return value if isinstance(value, (int, float)) else None


def _f(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one or two strengths per defense")
    ap.add_argument("--only", nargs="*", help="defenses to run (always with 'none' as the reference)")
    ap.add_argument("--strengths", nargs="*", help="only these strength labels (plus 'none')")
    ap.add_argument("--inversion-only", action="store_true", help="skip the utility and membership runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    args = ap.parse_args()
    configs = [c for c in STRENGTHS if (not args.quick or c[1] in QUICK)
               and (not args.only or c[0] in args.only or c[0] == "none")
               and (not args.strengths or c[1] in args.strengths or c[0] == "none")]
    seed = [f"seed={args.seed}"]
    inversion = _runs("scenarios/gia_fedsgd.yaml", configs, seed + INVERSION, args.out)
    if args.inversion_only:
        print("\n| defense | strength | IG PSNR gain dB | IG re-id | DLG PSNR gain dB | learned PSNR gain dB "
              "| learned re-id | adaptive learned PSNR gain dB | adaptive learned re-id |")
        print("|---|---|---|---|---|---|---|---|---|")
        for g in inversion:
            print(f"| {g['defense']} | {g['strength']} | {_f(_get(g, 'inverting_gradients.psnr_gain'), '+.1f')} | "
                  f"{_f(_get(g, 'inverting_gradients.reid_top1'), '.0%')} | {_f(_get(g, 'dlg.psnr_gain'), '+.1f')} | "
                  f"{_f(_get(g, 'learned_inversion.psnr_gain'), '+.1f')} | "
                  f"{_f(_get(g, 'learned_inversion.reid_top1'), '.0%')} | "
                  f"{_f(_get(g, 'adaptive_learned_inversion.psnr_gain'), '+.1f')} | "
                  f"{_f(_get(g, 'adaptive_learned_inversion.reid_top1'), '.0%')} |")
        return
    utility = _runs("scenarios/defense_brain_age.yaml", configs, seed, args.out)
    base_s = _get(utility[0], "client_s_per_round") or float("nan")
    print("\n| defense | strength | test MAE | IG PSNR gain dB | IG re-id | DLG PSNR gain dB | learned PSNR gain dB "
          "| learned re-id | adaptive learned re-id | MIA AUC (global, threshold) | TPR@1%FPR "
          "| MIA AUC (client update, alignment) | ε (δ=1e-5) | s/round vs none |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for u, g in zip(utility, inversion, strict=True):
        row = {"defense": u["defense"], "strength": u["strength"], "test_mae": _get(u, "test_mae"),
               "ig_gain": _get(g, "inverting_gradients.psnr_gain"), "ig_reid": _get(g, "inverting_gradients.reid_top1"),
               "dlg_gain": _get(g, "dlg.psnr_gain"), "learned_gain": _get(g, "learned_inversion.psnr_gain"),
               "learned_reid": _get(g, "learned_inversion.reid_top1"),
               "adaptive_reid": _get(g, "adaptive_learned_inversion.reid_top1"),
               "auc": _get(u, "mia_loss_threshold@global_model.auc"),
               "tpr1": _get(u, "mia_loss_threshold@global_model.tpr_at_1pct_fpr"),
               "align_auc": _get(u, "mia_update_alignment@client_update.auc"),
               "eps": _get(u, "dp_epsilon"), "slow": (_get(u, "client_s_per_round") or float("nan")) / base_s}
        table.append(row)
        print(f"| {row['defense']} | {row['strength']} | {_f(row['test_mae'], '.2f')} | {_f(row['ig_gain'], '+.1f')} | "
              f"{_f(row['ig_reid'], '.0%')} | {_f(row['dlg_gain'], '+.1f')} | {_f(row['learned_gain'], '+.1f')} | "
              f"{_f(row['learned_reid'], '.0%')} | {_f(row['adaptive_reid'], '.0%')} | {_f(row['auc'])} | "
              f"{_f(row['tpr1'], '.2f')} | "
              f"{_f(row['align_auc'])} | {_f(row['eps'], '.2f')} | {row['slow']:.2f}x |")
    skipped = [g["defense"] for g in inversion if g.get("inverting_gradients.status")]
    if skipped:
        print(f"\ninversion skipped for: {', '.join(sorted(set(skipped)))} "
              f"({next(g['inverting_gradients.status'] for g in inversion if g.get('inverting_gradients.status'))})")
    plot = [{"defense": r["defense"], "strength": r["strength"], "test_mae": r["test_mae"], "membership.auc": r["auc"]}
            for r in table]
    figure = privacy_utility_figure(plot, ["defense", "strength"], args.out / "defense_privacy_utility.png",
                                    attack_metric="membership.auc")
    print(f"\nplot: {figure}; client seconds per round without a defense: {base_s:.2f} (each row's "
          f"value is the mean over its clients and rounds); runs under {args.out}")


if __name__ == "__main__":
    main()
