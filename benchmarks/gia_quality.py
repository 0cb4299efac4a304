"""How much does gradient inversion recover from brain-age updates? Prints a markdown table.

Victims: synthetic brains z-scored like the brain-age task, in 3D (32^3 volumes) and 2D (central
axial slices), attacked through an untrained BrainAgeCNN (channels 8-16-32, global average pooling)
at its global weights. Per cell (dims x batch size x local steps): the FedSGD gradient (steps = 1)
or the FedAvg weight change after `steps` plain-SGD steps on the whole batch. Scores are always
beside the population-mean prior (gain) and re-identification among the client's batch plus a
pool of ~100 other subjects; the prior / PCA comes from auxiliary subjects disjoint from both.

    python benchmarks/gia_quality.py [--dims 2,3 --batch-sizes 1,2,4,8 --steps 1,5 --attack ig_pca
                                      --iterations 300 --subjects 2 --slice 64 --model brain_age_cnn]
    python benchmarks/gia_quality.py --model lenet --attack ig_short --iterations 100 --slice 32

Models: brain_age_cnn (global average pooling: the brain-age literature's design) and lenet (the
sigmoid LeNet of the DLG / Inverting Gradients papers, no global pooling).

Attacks: dlg = l2 matching, pixels, joint (unknown) age; ig = Inverting Gradients (cosine, TV,
signed Adam, known age); ig_pca = |cosine| on a 20-component PCA of the auxiliary scans, L2 pull to
the mean (label-free at batch 1, known age otherwise); ig_short = Inverting Gradients with a short,
small-step walk from the population mean (known age).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

from fedsim.attacks.gradient_inversion.optimize import (
    InversionConfig,
    gradients_of,
    invert_gradient,
    invert_weight_update,
)
from fedsim.attacks.metrics import score_reconstruction
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.models.brain_age import BrainAgeCNN
from fedsim.models.lenet import LeNet
from fedsim.tasks.brain_age import zscore_volumes

N_AUX, N_POOL = 100, 100


def attack_config(name: str, *, iterations: int, batch: int, seed: int) -> InversionConfig:
    """The attacks; settings from tuning on these models (see the module docstring)."""
    if name == "ig_short":  # a short signed-Adam walk from the population mean: best PSNR on lenet
        return InversionConfig(objective="cosine", lr=0.03, tv=1e-4, iterations=iterations, seed=seed)
    if name == "dlg":
        return InversionConfig(objective="l2", lr=0.1, tv=0.0, label="joint", iterations=iterations, seed=seed)
    if name == "ig":
        return InversionConfig(objective="cosine", lr=0.1, tv=1e-4, iterations=iterations, seed=seed)
    if name == "ig_pca":
        return InversionConfig(objective="abs_cosine" if batch == 1 else "cosine", lr=0.05, signed=False,
                               tv=0.0, prior_pull=3e-3, parameterization="pca", n_components=20,
                               iterations=iterations, seed=seed)
    raise ValueError(name)


def load_images(dims: int, side: int, n_victims: int) -> dict[str, torch.Tensor | float]:
    """Victims, auxiliary and pool subjects (disjoint), z-scored per image; ages in years."""
    shape = 32 if dims == 3 else side
    cohort = load_cohort(CohortSpec(n_subjects=n_victims + N_AUX + N_POOL, shape=shape, n_sites=3, seed=0))
    images = cohort.images if dims == 3 else cohort.images[:, :, :, shape // 2]  # central axial slice
    x = torch.from_numpy(np.ascontiguousarray(zscore_volumes(images)[:, None]))
    age = torch.from_numpy(cohort.age.astype(np.float32))
    aux = slice(n_victims, n_victims + N_AUX)
    return {"victims": x[:n_victims], "victim_age": age[:n_victims], "aux": x[aux],
            "pool": x[n_victims + N_AUX:], "age_mean": float(age[aux].mean()), "age_std": float(age[aux].std())}


def make_model(dims: int, data: dict, name: str = "brain_age_cnn") -> nn.Module:
    """The attacked network at its (untrained) global weights: brain_age_cnn pools globally, lenet does not."""
    torch.manual_seed(0)
    if name == "lenet":
        return LeNet(spatial_dims=dims, out_bias=data["age_mean"], out_scale=data["age_std"])
    return BrainAgeCNN(channels=[8, 16, 32], norm="instance", spatial_dims=dims,
                       out_bias=data["age_mean"], out_scale=data["age_std"])


def fwd_bwd_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int = 5) -> float:
    """One forward + backward on the batch: the unit of attack cost."""
    gradients_of(model, nn.functional.mse_loss, x, y)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        gradients_of(model, nn.functional.mse_loss, x, y)
    return (time.perf_counter() - t0) / reps


def attack_once(model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: dict, *, steps: int,
                config: InversionConfig, client_lr: float) -> tuple:
    """Observe the client (gradient or update) and invert it; the attacker gets the mean age as a guess."""
    loss = nn.functional.mse_loss
    if config.label == "joint":
        known = torch.full_like(y, data["age_mean"])  # the attacker's starting guess only
    else:
        known = None if config.objective == "abs_cosine" else y
    if steps == 1:
        return invert_gradient(model, loss, gradients_of(model, loss, x, y), input_shape=x.shape,
                               labels=known, auxiliary=data["aux"], config=config)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    client = copy.deepcopy(model)
    opt = torch.optim.SGD(client.parameters(), lr=client_lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(client(x), y).backward()
        opt.step()
    return invert_weight_update(model, loss, global_state, client.state_dict(), input_shape=x.shape,
                                local_steps=steps, lr=client_lr, batch_size=len(x), labels=known,
                                auxiliary=data["aux"], config=config)


def run_cell(model: nn.Module, data: dict, *, batch: int, steps: int, args: argparse.Namespace) -> dict:
    rows = []
    for subject in range(args.subjects):
        idx = slice(subject * batch, (subject + 1) * batch)
        x, y = data["victims"][idx], data["victim_age"][idx]
        config = attack_config(args.attack, iterations=args.iterations, batch=batch, seed=subject)
        result = attack_once(model, x, y, data, steps=steps, config=config, client_lr=args.client_lr)
        candidates = torch.cat([x, data["pool"]])
        score = score_reconstruction(result.images, x, prior=data["aux"].mean(0), candidates=candidates,
                                     true_index=list(range(batch)))
        age_err = float((result.labels - y).abs().mean()) if config.label == "joint" else float("nan")
        unit = fwd_bwd_seconds(model, x, y)
        rows.append({**score, "age_err": age_err, "seconds": result.seconds,
                     "cost_ratio": result.seconds / max(args.iterations, 1) / unit})
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--subjects", type=int, default=2, help="victim batches per cell")
    parser.add_argument("--dims", default="2,3")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--steps", default="1,5")
    parser.add_argument("--attack", choices=["dlg", "ig", "ig_pca", "ig_short"], default="ig_pca")
    parser.add_argument("--model", choices=["brain_age_cnn", "lenet"], default="brain_age_cnn")
    parser.add_argument("--slice", type=int, default=64, choices=[32, 64], help="2D slice side")
    parser.add_argument("--client-lr", type=float, default=1e-4, help="client's plain-SGD learning rate")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    print(f"model={args.model} attack={args.attack} iterations={args.iterations} subjects/cell={args.subjects} "
          f"threads={args.threads} pool={N_POOL} aux={N_AUX}\n")
    print("| dims | batch | steps | PSNR | prior PSNR | gain dB | SSIM | prior SSIM | re-id top-1 | chance "
          "| median rank | age err (y) | seconds | iter/(fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dims in (int(d) for d in args.dims.split(",")):
        data = load_images(dims, args.slice, args.subjects * max(batches))
        model = make_model(dims, data, args.model)
        warm = attack_config(args.attack, iterations=2, batch=1, seed=0)  # first-call set-up off the clock
        attack_once(model, data["victims"][:1], data["victim_age"][:1], data, steps=1, config=warm,
                    client_lr=args.client_lr)
        for batch in batches:
            for steps in (int(s) for s in args.steps.split(",")):
                r = run_cell(model, data, batch=batch, steps=steps, args=args)
                side = "32^3" if dims == 3 else f"{args.slice}^2"
                print(f"| {dims}D {side} | {batch} | {steps} | {r['psnr']:.2f} | {r['prior_psnr']:.2f} | "
                      f"{r['psnr_gain']:+.2f} | {r['ssim']:.3f} | {r['prior_ssim']:.3f} | {r['reid_top1']:.2f} | "
                      f"{r['chance_top1']:.3f} | {r['median_rank']:.1f} | {r['age_err']:.1f} | "
                      f"{r['seconds']:.1f} | {r['cost_ratio']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
