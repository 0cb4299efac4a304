"""How much does a learned inversion recover from FedSGD gradients and FedAvg updates? Prints a
markdown table.

For each input (2D central slices, 3D volumes at 32^3) x network x state (untrained; trained on 400
further scans for at least 5 epochs and until it predicts age 25% better than the mean: `partly_train`),
the attacker fits `learned_inversion`'s map on `--aux` scans of its own
(x `--augment` with flips and shifts; in 2D `--slices` neighbouring axial slices too) through the
network at its current weights, then inverts the
FedSGD gradients of `--victims` other subjects at each batch size, and the FedAvg weight updates of
clients taking `--fedavg-steps` Adam steps of batch 1 over 1 or 5 of them (the map then fitted on
pseudo-clients replaying those steps on the attacker's labelled scans). Victims are also the
re-identification pool (chance = 1 / victims); "rescan" ranks against a second scan of each victim
(same anatomy, new scanner noise), so the attack cannot win by matching a scan's own noise. At
batch > 1 the attack returns the map's deviation from the mean with both signs: "one" counts the
batches where the nearest pool scan of either image is a member, "two" where the two images find
two different members; the gain is the best-reconstructed member's. Optimisation attacks (Inverting
Gradients, the PCA prior) run at batch 1 on the first `--optim` victims of the same observations.

    python benchmarks/learned_inversion.py [--dims 2,3 --models small_cnn,brain_age_cnn,lenet
        --states untrained,trained --protocols fedsgd,fedavg --batches 1,2,4,8 --fedavg-steps 5
        --fedavg-images 1,5 --aux 1800 --augment 4 --slices 0 --victims 300 --optim 10]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from torch import nn

from fedsim.attacks.gradient_inversion import learned
from fedsim.attacks.gradient_inversion.client_steps import ClientSteps
from fedsim.attacks.gradient_inversion.optimize import InversionConfig, gradients_of, invert_gradient
from fedsim.attacks.metrics import psnr, reidentification_ranks, score_reconstruction
from fedsim.data.synthetic import Cohort, CohortSpec, load_cohort, rescan
from fedsim.models.brain_age import BrainAgeCNN
from fedsim.models.lenet import LeNet
from fedsim.scenario import FederationConfig, TaskConfig
from fedsim.tasks.brain_age import BrainAgeSliceTask, zscore_volumes
from fedsim.training import batch_loader, make_optimizer, predict, run_steps

SEED, TRAIN = 2024, 400
LEARNED = 0.75  # "trained": training MAE at most this share of predicting the training mean
MIN_EPOCHS, MAX_EPOCHS = 5, 60
# Adam, batch 8. small_cnn at 1e-3 or 3e-3 in 3D predicts a constant within 5 epochs (ReLUs die)
TRAIN_LR = {"small_cnn": 3e-4, "brain_age_cnn": 1e-3, "lenet": 3e-3}


class SmallCNN(nn.Module):
    """The feasibility study's net: three 3x3 conv + ReLU, global average pooling, a linear head."""

    def __init__(self, spatial_dims: int, out_bias: float, out_scale: float) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.features = nn.Sequential(conv(1, 16, 3), nn.ReLU(), conv(16, 32, 3), nn.ReLU(), conv(32, 64, 3), nn.ReLU())
        self.head = nn.Linear(64, 1)
        self.out_scale = out_scale
        nn.init.constant_(self.head.bias, out_bias / out_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(2).mean(2)).squeeze(1) * self.out_scale


def build(name: str, dims: int, mean: float, std: float) -> nn.Module:
    torch.manual_seed(0)
    if name == "small_cnn":
        return SmallCNN(dims, mean, std)
    if name == "lenet":
        return LeNet(spatial_dims=dims, out_bias=mean, out_scale=std)
    return BrainAgeCNN(channels=(8, 16, 32, 64) if dims == 3 else (16, 32, 64), spatial_dims=dims,
                       out_bias=mean, out_scale=std)


class MSE:
    """The brain-age task's loss (what every client minimises)."""

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(pred, target)


def tensors(images: np.ndarray, dims: int) -> torch.Tensor:
    x = zscore_volumes(images if dims == 3 else images[..., images.shape[-1] // 2])[:, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def cell(args: argparse.Namespace, dims: int, name: str, state: str) -> list[dict]:
    torch.set_num_threads(args.threads)
    n = args.aux + args.victims + TRAIN
    spec = CohortSpec(n_subjects=n, shape=32, n_sites=3, seed=SEED)
    cohort = load_cohort(spec)
    x, age = tensors(cohort.images, dims), torch.from_numpy(cohort.age.astype(np.float32))
    aux, vic, train = np.arange(args.aux), np.arange(args.aux, args.aux + args.victims), np.arange(n - TRAIN, n)
    victims = vic.tolist()
    later = tensors(rescan(spec, victims, session=1), dims)
    xv, yv = x[vic], age[vic]
    model = build(name, dims, float(age[train].mean()), float(age[train].std()))
    try:
        epochs = partly_train(model, x[train], age[train], TRAIN_LR[name]) if state == "trained" else 0
    except NotLearnedError as exc:  # no network in mid-federation to attack: say so, run the other cells
        print(f"# {dims}D {name} {state}: skipped, {exc}", flush=True)
        return []
    with torch.no_grad():
        test_mae = float(torch.cat([model(xv[i:i + 50]) for i in range(0, len(xv), 50)]).sub(yv).abs().mean())
    print(f"# {dims}D {name} {state}: {epochs} epochs, test MAE {test_mae:.2f} "
          f"(predict the training mean: {float((yv - age[train].mean()).abs().mean()):.2f})", flush=True)
    names, bias = learned.trainable_names(model), learned.output_bias(model)
    prior = x[aux].mean(0)
    xa, ya = attacker_scans(cohort, age, aux, dims, args.slices)
    subjects = args.aux if len(xa) > args.aux else None  # several slices of each
    base = {"dims": dims, "model": name, "state": state, "test_mae": test_mae, "epochs": epochs}
    scoring = Scoring(xv, later, cohort.site[vic], prior)
    base["data_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # before any fit: cohort, model
    rows = []
    if "fedsgd" in args.protocols:
        t0 = time.perf_counter()
        inversion = learned.fit_inversion(model, xa, augment_copies=args.augment, kernel=args.kernel, seed=0,
                                          subjects=subjects)
        fit_s = time.perf_counter() - t0
        for batch in args.batches:
            groups = [list(range(i, i + batch)) for i in range(0, len(xv) - batch + 1, batch)]
            feats = torch.cat([learned.observed_features(dict(zip(names, gradients_of(model, MSE().loss, xv[g], yv[g]),
                                                                  strict=True)), names, bias) for g in groups])
            recon = torch.cat([inversion.batch_images(f[None], batch) for f in feats])  # batch images per batch
            rows.append(scoring.row({**base, "protocol": "FedSGD", "batch": batch, "attack": "learned"},
                                    recon, groups, inversion, fit_s))
    if "fedavg" in args.protocols:
        for images in args.fedavg_images:
            plan = ClientSteps(gradient=False, optimizer="adam", lr=FEDAVG_LR, steps=args.fedavg_steps, batch_size=1,
                               images=images)
            t0 = time.perf_counter()
            inversion = learned.fit_inversion(model, xa, targets=ya, loss_fn=MSE().loss, plan=plan,
                                              augment_copies=args.augment, kernel=args.kernel, seed=0,
                                              subjects=subjects)
            fit_s = time.perf_counter() - t0
            groups = [list(range(i, i + images)) for i in range(0, len(xv) - images + 1, images)]
            feats = torch.cat([fedavg_features(model, xv[g], yv[g], plan, names, bias) for g in groups])
            recon = torch.cat([inversion.batch_images(f[None], images) for f in feats])
            rows.append(scoring.row({**base, "protocol": f"FedAvg {plan.steps} steps, {images} scan(s)",
                                     "batch": images, "attack": "learned"}, recon, groups, inversion, fit_s))
    rows += optimisation_rows(args, model, xv, yv, x[aux], dims, name, state)
    return rows


FEDAVG_LR = FederationConfig().lr  # fedsim's client default (Adam)


def partly_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float) -> int:
    """Train (Adam, batch 8) for at least MIN_EPOCHS and until the network has learned something:
    its training MAE at most LEARNED x that of predicting the mean (a network in mid-federation, not
    one whose ReLUs died or whose sigmoids have not moved yet, which predicts a constant). Returns the
    epochs taken."""
    config = FederationConfig(batch_size=8, lr=lr)
    optimizer, loader = make_optimizer(model, config), batch_loader(x, y, 8, np.random.default_rng(0))
    floor = float((y - y.mean()).abs().mean())
    for epoch in range(1, MAX_EPOCHS + 1):
        run_steps(model, optimizer, loader, len(loader), task=MSE())
        learned_enough = epoch >= MIN_EPOCHS and float((predict(model, x) - y).abs().mean()) <= LEARNED * floor
        model.train()  # as a client leaves it
        if learned_enough:
            return epoch
    mae = float((predict(model, x) - y).abs().mean())
    raise NotLearnedError(f"{type(model).__name__} did not learn in {MAX_EPOCHS} epochs at lr {lr} "
                          f"(training MAE {mae:.2f}, predicting the mean {floor:.2f})")


class NotLearnedError(RuntimeError):
    """A network that still predicts (nearly) a constant after MAX_EPOCHS."""


def attacker_scans(cohort: Cohort, age: torch.Tensor, aux: np.ndarray, dims: int,
                   slices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's fit scans: its subjects' volumes, or in 2D their central slice and, with
    `slices` > 0, the `slices` axial slices either side of it too (new anatomy, unlike shifts), as
    the plug-in's `slices` gives them (scan i shows subject i % len(aux))."""
    if dims == 3 or slices == 0:
        return tensors(cohort.images[aux], dims), age[aux]
    return BrainAgeSliceTask(config=TaskConfig(), target_mean=0.0).neighbour_slices(cohort, aux.tolist(), slices)


def fedavg_features(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: ClientSteps, names: list[str],
                    bias: str) -> torch.Tensor:
    """What a client holding scans `x` sends after `plan.steps` Adam steps of batch 1 (torch.optim)."""
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr)
    model.train()
    for batch in plan.schedule():
        optimizer.zero_grad()
        MSE().loss(model(x[batch]), y[batch]).backward()
        optimizer.step()
    feats = learned.observed_features(model.state_dict(), names, bias, global_state=start)
    model.load_state_dict(start)
    return feats


class Scoring:
    """Scores of the reconstructions of groups of victims (one update per group)."""

    def __init__(self, xv: torch.Tensor, later: torch.Tensor, sites: np.ndarray, prior: torch.Tensor) -> None:
        self.xv, self.later, self.sites, self.prior = xv, later, sites, prior

    def row(self, base: dict, recon: torch.Tensor, groups: list[list[int]], inversion: learned.InversionMap,
            fit_s: float) -> dict:
        xv, prior, n = self.xv, self.prior, len(groups[0])
        row = {**base, "aux_pairs": len(inversion.features), "fit_s": fit_s, "ridge": inversion.ridge,
               "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
        if n == 1:
            s = score_reconstruction(recon, xv, prior=prior, candidates=xv, true_index=list(range(len(xv))),
                                     batch=False)
            again = reidentification_ranks(recon, self.later, list(range(len(xv))))
            row.update({k: s[k] for k in ("psnr", "psnr_gain", "ssim", "reid_top1", "reid_top5", "median_rank")},
                       rescan_top1=float((again == 1).double().mean()),
                       worst_site_top1=min(float((reidentification_ranks(
                           recon[self.sites == k], xv, np.flatnonzero(self.sites == k)) == 1).double().mean())
                           for k in range(3)))
        else:  # the two signed images of each group: is a member the nearest pool scan of either / of both?
            nearest = torch.cdist(_z(recon), _z(xv)).argmin(1).reshape(len(groups), n)[:, :2].tolist()
            gains = [float((psnr(recon[i * n:(i + 1) * n], xv[g]) - psnr(prior[None].expand(n, *prior.shape), xv[g]))
                           .max()) for i, g in enumerate(groups)]
            pairs = list(zip(nearest, groups, strict=True))
            row.update(found_one=statistics.fmean(bool(set(a) & set(g)) for a, g in pairs),
                       found_two=statistics.fmean(len(set(a) & set(g)) == 2 for a, g in pairs),
                       psnr_gain=statistics.fmean(gains))
        print(_line(row), flush=True)
        return row


def optimisation_rows(args: argparse.Namespace, model: nn.Module, xv: torch.Tensor, yv: torch.Tensor,
                      xa: torch.Tensor, dims: int, name: str, state: str) -> list[dict]:
    """Inverting Gradients and the PCA prior on the same batch-1 gradients of the first victims."""
    if args.optim <= 0:
        return []
    configs = {"inverting_gradients": InversionConfig(objective="cosine", lr=0.03, tv=1e-4, iterations=100),
               "ig_pca_prior": InversionConfig(objective="abs_cosine", lr=0.05, signed=False, tv=0.0,
                                               prior_pull=3e-3, parameterization="pca", n_components=20,
                                               iterations=300)}
    rows = []
    for label, config in configs.items():
        recon = []
        for i in range(args.optim):
            grads = gradients_of(model, MSE().loss, xv[i:i + 1], yv[i:i + 1])
            recon.append(invert_gradient(model, MSE().loss, grads, input_shape=(1, *xv.shape[1:]), labels=yv[i:i + 1],
                                         auxiliary=xa[:256], config=config).images.detach())
        s = score_reconstruction(torch.cat(recon), xv[:args.optim], prior=xa.mean(0), candidates=xv,
                                 true_index=list(range(args.optim)), batch=False)
        row = {"dims": dims, "model": name, "state": state, "protocol": "FedSGD", "batch": 1, "attack": label,
               **{k: s[k] for k in ("psnr", "psnr_gain", "ssim", "reid_top1", "reid_top5", "median_rank")}}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _z(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1).double()
    return (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)


def _f(value: object, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _line(r: dict) -> str:
    found = _f(r.get("reid_top1"), ".0%") if r["batch"] == 1 else (
        f"one: {_f(r.get('found_one'), '.0%')}, two: {_f(r.get('found_two'), '.0%')}")
    return (f"| {r['dims']}D | {r['model']} | {r['state']} | {r['protocol']} | {r['attack']} | {r['batch']} "
            f"| {_f(r.get('psnr'), '.1f')} "
            f"| {_f(r.get('psnr_gain'), '+.1f')} | {_f(r.get('ssim'), '.3f')} | {found} "
            f"| {_f(r.get('reid_top5'), '.0%')} "
            f"| {_f(r.get('median_rank'), '.0f')} | {_f(r.get('rescan_top1'), '.0%')} | "
            f"{_f(r.get('worst_site_top1'), '.0%')} | {r.get('aux_pairs', '–')} | {_f(r.get('fit_s'), '.0f')} "
            f"| {_f(r.get('peak_gb'), '.1f')}{_data(r)} |")


def _data(r: dict) -> str:
    """The process's peak before the fit (cohort, rescans, model): what the attack adds is the rest."""
    return f" (data {r['data_gb']:.1f})" if "data_gb" in r and "peak_gb" in r else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")], default=[2, 3])
    p.add_argument("--models", type=lambda s: s.split(","), default=["small_cnn", "brain_age_cnn", "lenet"])
    p.add_argument("--states", type=lambda s: s.split(","), default=["untrained", "trained"])
    p.add_argument("--protocols", type=lambda s: s.split(","), default=["fedsgd", "fedavg"])
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8],
                   help="FedSGD batch sizes")
    p.add_argument("--fedavg-steps", type=int, default=5)
    p.add_argument("--fedavg-images", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5],
                   help="scans a FedAvg client holds (it takes --fedavg-steps Adam steps of batch 1 over them)")
    p.add_argument("--aux", type=int, default=1800)
    p.add_argument("--augment", type=int, default=4)
    p.add_argument("--kernel", choices=["linear", "rbf"], default="linear")
    p.add_argument("--slices", type=int, default=0, help="2D: the attacker also fits on this many axial slices "
                   "either side of the central one")
    p.add_argument("--victims", type=int, default=300)
    p.add_argument("--optim", type=int, default=10, help="victims the optimisation attacks run on (0: none)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.victims} victims (chance top-1 {1 / args.victims:.1%}), attacker's scans {args.aux} x "
          f"{args.augment}, seed {SEED}; FedAvg: {args.fedavg_steps} Adam steps of batch 1, lr {FEDAVG_LR}\n")
    print("| input | network | state | update | attack | scans | PSNR | gain dB | SSIM | re-id top-1 | top-5 "
          "| median rank | rescan top-1 | worst site top-1 | pairs | fit s | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    spawn = multiprocessing.get_context("spawn")  # one process per cell: "peak GB" is that cell's own
    for dims in args.dims:
        for name in args.models:
            for state in args.states:
                with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                    pool.submit(cell, args, dims, name, state).result()


if __name__ == "__main__":
    main()
