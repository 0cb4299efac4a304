"""How much does a model-tampering (imprint) server recover, and what does it cost the honest task?

Part 1, the grid (attack core directly, no Flower): synthetic brains z-scored like the brain-age task,
3D 32^3 volumes and 2D central slices, an untrained BrainAgeCNN (8-16-32, instance norm) behind an
imprint block whose bins sit at Gaussian quantiles of a random linear measurement of the server's
own scans (disjoint from the victims). Per cell: the FedSGD gradient of one batch, or the FedAvg
weight change after `steps` plain-SGD steps (momentum 0.9) on fresh batches of the client's 64 scans.
Scores per scan after optimal matching: recovered = PSNR > 30 dB; mean PSNR with each scan capped at
100 dB (exact in float32 is above that); re-identification top-1 among the client's scans plus a
pool of 100 other subjects. Averaged over `--repeats` batches.

Part 2, real federations (Flower + Ray, scenarios/gia_imprint*.yaml): the attack's scores, the
final test MAE with the imprint vs the same run without it, and with `model_vetting` on, which
targeted clients refused. Then the utility cost of the tampering alone: every client trains the
imprinted model in every round (the quickstart federation, which learns), against the agreed model.

    python benchmarks/imprint_table.py                      # grid + 6 federated runs, ~8 minutes
    python benchmarks/imprint_table.py --no-federated --batch-sizes 1,8 --dims 3
    python benchmarks/imprint_table.py --summarize runs/gia_population_prior/<timestamp>   # per-attack means
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from fedsim.attacks.base import Observation
from fedsim.attacks.imprint import ImprintAttack
from fedsim.attacks.metrics import match_batch, psnr, reidentification_ranks
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.models.brain_age import BrainAgeCNN
from fedsim.models.imprint import ImprintedModel, make_imprint, tamper
from fedsim.tasks.brain_age import zscore_volumes

REPO = Path(__file__).resolve().parents[1]
N_AUX, N_POOL, CLIENT_SCANS = 60, 100, 64


def load_images(dims: int) -> dict[str, torch.Tensor]:
    """Client scans, the server's auxiliary scans and a re-identification pool (disjoint), z-scored."""
    cohort = load_cohort(CohortSpec(n_subjects=CLIENT_SCANS + N_AUX + N_POOL, shape=32, n_sites=3, seed=0))
    images = cohort.images if dims == 3 else cohort.images[:, :, :, 16]
    x = torch.from_numpy(np.ascontiguousarray(zscore_volumes(images)[:, None]))
    age = torch.from_numpy(cohort.age.astype(np.float32))
    return {"client": x[:CLIENT_SCANS], "age": age[:CLIENT_SCANS], "aux": x[CLIENT_SCANS:CLIENT_SCANS + N_AUX],
            "pool": x[CLIENT_SCANS + N_AUX:], "age_mean": age.mean(), "age_std": age.std()}


def observe(data: dict, *, batch: int, bins: int, steps: int, seed: int, strength: float = 1e-4,
            optimizer: str = "sgd") -> tuple[Observation, torch.Tensor]:
    """One targeted client's reply to the tampered model, and the scans that went into it."""
    torch.manual_seed(seed)
    dims = data["client"].dim() - 2
    body = BrainAgeCNN(channels=[8, 16, 32], spatial_dims=dims, out_bias=float(data["age_mean"]),
                       out_scale=float(data["age_std"]))
    arrays = make_imprint(data["aux"], bins=bins, strength=strength, generator=torch.Generator().manual_seed(seed))
    model = ImprintedModel(body, input_shape=data["aux"].shape[1:], bins=bins)
    model.load_state_dict(tamper(body.state_dict(), arrays))
    sent = copy.deepcopy(model.state_dict())
    order = torch.randperm(CLIENT_SCANS, generator=torch.Generator().manual_seed(seed))
    batches = [order[(i * batch) % CLIENT_SCANS:][:batch] for i in range(steps)]  # fresh scans each step
    loss = nn.functional.mse_loss
    if steps == 0:  # FedSGD: the gradient of one batch
        used, kind = order[:batch], "gradient"
        loss(model(data["client"][used]), data["age"][used]).backward()
        update = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    else:
        opt = (torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(model.parameters(), lr=1e-3))
        for idx in batches:
            opt.zero_grad()
            loss(model(data["client"][idx]), data["age"][idx]).backward()
            opt.step()
        update, kind = model.state_dict(), "weights"
        used = torch.unique(torch.cat(batches))
    obs = Observation(round=1, client=0, kind=kind, update=update, global_state=sent, num_examples=CLIENT_SCANS,
                      batch_size=batch, local_steps=max(steps, 1), lr=1e-4, auxiliary=data["aux"])
    return obs, used


def score(recon: torch.Tensor, used: torch.Tensor, data: dict) -> dict[str, float]:
    truth = data["client"][used]
    recon = recon[: len(truth)]
    matched = recon[match_batch(recon, truth)]
    per_scan = psnr(matched, truth).clamp(max=100.0)
    candidates = torch.cat([data["client"], data["pool"]])
    ranks = reidentification_ranks(matched, candidates, used.tolist())
    return {"recovered": float((per_scan > 30).double().mean()), "psnr": float(per_scan.mean()),
            "reid": float((ranks <= 1).double().mean()), "images": len(truth)}


def grid(args: argparse.Namespace) -> None:
    print("## Imprint attack, attack core (no Flower)\n")
    print("| input | update | batch | bins | images in update | alone in a bin (expected) | recovered >30 dB "
          "| mean PSNR (cap 100) | re-id top-1 | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cells = [(b, f * b, 0, "sgd") for b in args.batch_sizes for f in args.factors]
    cells += [(8, 32, s, "sgd") for s in args.steps if s > 0]  # FedAvg: batch 8, 4x bins, more local steps
    if args.steps:
        most = max(args.steps)  # a server that knows the steps sizes the bins to the images, not the batch
        cells += [(8, 4 * 8 * most, most, "sgd"), (8, 32, 1, "adam")]
    for dims in args.dims:
        data = load_images(dims)
        side = "32^3" if dims == 3 else "32^2 slice"
        for batch, bins, steps, optimizer in cells:
            t0, rows = time.perf_counter(), []
            for rep in range(args.repeats):
                obs, used = observe(data, batch=batch, bins=bins, steps=steps, seed=rep, optimizer=optimizer)
                rows.append(score(ImprintAttack().reconstruct(obs).images, used, data))
            r = {k: statistics.fmean(row[k] for row in rows) for k in rows[0]}
            update = "FedSGD gradient" if steps == 0 else f"FedAvg, {steps} {optimizer.upper()} step(s)"
            alone = ((bins - 1) / bins) ** (r["images"] - 1)  # n scans in k equal-mass bins
            print(f"| {dims}D {side} | {update} | {batch} | {bins} ({bins / batch:g}x batch) | {r['images']:.0f} | "
                  f"{alone:.0%} | {r['recovered']:.0%} | {r['psnr']:.1f} | {r['reid']:.0%} | "
                  f"{(time.perf_counter() - t0) / args.repeats:.1f} |", flush=True)


def _run(raw: dict, out: Path) -> dict:
    from fedsim.loading import validate_scenario
    from fedsim.runner import run_scenario

    result = run_scenario(validate_scenario(raw), out_dir=out, log=lambda _: None)
    return result.summary | {"failures": result.failures}


def federated(args: argparse.Namespace) -> None:
    base = yaml.safe_load((REPO / "scenarios/gia_imprint.yaml").read_text())
    honest = copy.deepcopy(base)
    honest["server"]["behaviours"] = [b for b in base["server"]["behaviours"] if b["name"] != "imprint"]
    honest["attacks"] = []
    honest["server"]["capture"] = False
    vetted = yaml.safe_load((REPO / "scenarios/gia_imprint_vetted.yaml").read_text())
    targets = base["server"]["targets"]
    print("\n## Real federations (scenarios/gia_imprint*.yaml: FedSGD requests, imprint 4x, "
          f"targets clients {targets['clients']} in rounds {targets['rounds']})\n")
    print("| run | final test MAE | client | batch | recovered >30 dB | re-id top-1 | refused (round: clients) "
          "| wall s |")
    print("|---|---|---|---|---|---|---|---|")
    out = Path(tempfile.mkdtemp(prefix="imprint-table-"))
    for label, raw in (("same requests, no imprint", honest), ("imprint", base), ("imprint + model_vetting", vetted)):
        s = _run(raw, out)
        refused: dict[int, list[int]] = {}
        for f in s["failures"]:
            refused.setdefault(f["round"], []).append(f["client"])
        ref = "; ".join(f"{r}: {c}" for r, c in sorted(refused.items())) or "none"
        ok = [a for a in s["attacks"] if a.get("status") == "ok"]
        mae = s["final"].get("mae", float("nan"))
        if not ok:
            status = s["attacks"][0]["status"] if s["attacks"] else "–"
            print(f"| {label} | {mae:.2f} | – | – | {'0% (' + status + ')' if s['attacks'] else '–'} | – | {ref} "
                  f"| {s['wall_s']:.0f} |")
        for a in ok:
            print(f"| {label} | {mae:.2f} | {a['client']} | {a['batch_size']} | {a['recovered_30db']:.0%} | "
                  f"{a['reid_top1']:.0%} | {ref} | {s['wall_s']:.0f} |", flush=True)
    utility(out)
    print(f"\nRun folders under {out}")


def utility(out: Path, rounds: int = 10) -> None:
    """The honest task's cost of the tampering alone: every client gets the imprinted model in every
    round and trains it as usual (the quickstart federation, which learns; no gradient requests, no attack)."""
    honest = yaml.safe_load((REPO / "scenarios/quickstart.yaml").read_text())
    honest["federation"]["rounds"] = rounds
    runs = [("agreed model", honest)]
    for strength in (1e-4, 1e-6):  # the default, and a 100x weaker block: how much is chaos, not cost
        raw = copy.deepcopy(honest)
        raw["server"] = {"behaviours": [{"name": "imprint", "params": {"bins": 4, "strength": strength}}],
                         "targets": {"clients": None, "rounds": None}, "capture": False}
        runs.append((f"imprinted (strength {strength:g}), block stripped before aggregation", raw))
    print(f"\n## Utility: every client trains the imprinted model in every round (quickstart, {rounds} rounds)\n")
    print("| run | test MAE round 0 | final test MAE | predict the mean | wall s |")
    print("|---|---|---|---|---|")
    for label, r in runs:
        s = _run(r, out)
        print(f"| {label} | {s['initial']['mae']:.2f} | {s['final']['mae']:.2f} | "
              f"{s['baseline_predict_mean']['mae']:.2f} | {s['wall_s']:.0f} |", flush=True)


def summarize(run_dirs: list[Path]) -> None:
    """Mean scores per attack of recorded runs (e.g. scenarios/gia_population_prior.yaml)."""
    print("| run | attack | observations | mean PSNR gain dB (min..max) | gain > 0 | SSIM (prior) "
          "| re-id top-1 | re-id top-5 | median rank |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in run_dirs:
        rows = json.loads((run / "summary.json").read_text())["attacks"]
        for name in dict.fromkeys(r["attack"] for r in rows):
            ok = [r for r in rows if r["attack"] == name and r.get("status") == "ok"]
            if not ok:
                continue
            m = {k: statistics.fmean(r[k] for r in ok) for k in ("psnr_gain", "ssim", "prior_ssim", "reid_top1",
                                                                 "reid_top5")}
            gains = [r["psnr_gain"] for r in ok]
            print(f"| {run.parent.name} | {name} | {len(ok)} | "
                  f"{m['psnr_gain']:+.2f} ({min(gains):+.1f}..{max(gains):+.1f}) "
                  f"| {sum(g > 0 for g in gains)}/{len(ok)} | {m['ssim']:.3f} ({m['prior_ssim']:.3f}) | "
                  f"{m['reid_top1']:.0%} | {m['reid_top5']:.0%} | "
                  f"{statistics.median(r['median_rank'] for r in ok):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser.add_argument("--dims", type=ints, default=[3, 2])
    parser.add_argument("--batch-sizes", type=ints, default=[1, 8, 32, 64])
    parser.add_argument("--factors", type=ints, default=[2, 4], help="bins per image of the batch")
    parser.add_argument("--steps", type=ints, default=[1, 2, 4, 8], help="FedAvg local steps (batch 8, 4x bins)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-federated", action="store_true", help="skip the Flower runs")
    parser.add_argument("--no-grid", action="store_true", help="only the Flower runs")
    parser.add_argument("--summarize", type=Path, nargs="+", help="only print per-attack means of these runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.summarize:
        return summarize(args.summarize)
    if not args.no_grid:
        grid(args)
    if not args.no_federated:
        federated(args)


if __name__ == "__main__":
    main()
