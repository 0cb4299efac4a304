"""What does DP-SGD cost per training step? Non-private vs the dp_sgd defense in each grad_sample_mode.

Same model, batch and optimizer for every row; each row wraps a fresh model through the defense's own
`wrap_training` (Opacus PrivacyEngine) and times single steps (forward, backward, step) on one fixed
batch (fixed, not Poisson, so every row steps on the same images). Rows take turns step by step, so
a busy machine slows them alike. Prints the median seconds per step after warm-up and the ratio to
the non-private row of the same run.

    python benchmarks/dp_overhead.py [--shape 32 --channels 8 16 32 64 --batch 8 --steps 10 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedsim.defenses.base import ClientRound
from fedsim.defenses.dp_sgd import DPSGD
from fedsim.scenario import FederationConfig, TaskConfig
from fedsim.tasks import TASKS

MODES = ("hooks", "functorch", "ew")


def make_step(mode: str | None, args: argparse.Namespace, device: torch.device) -> Callable[[], float]:
    """One timed training step (seconds) of a fresh model; `mode` None is plain (non-private) training."""
    torch.manual_seed(0)
    config = FederationConfig(batch_size=args.batch, lr=1e-3, local_steps=args.steps)
    task = TASKS.get("brain_age")(config=TaskConfig(model={"channels": args.channels, "norm": args.norm}),
                                  target_mean=0.0, target_std=1.0)
    model = task.build_model().to(device)
    n = args.batch * 4
    x, y = torch.randn(n, 1, *(args.shape,) * 3), torch.randn(n)
    loader = DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=args.batch, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if mode is not None:
        defense = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode, poisson_sampling=False)
        ctx = ClientRound(client=0, server_round=1, task=task, config=config, rng=np.random.default_rng(0))
        model, optimizer, loader = defense.wrap_training(model, optimizer, loader, ctx=ctx)
    model.train()
    xb, yb = x[:args.batch].to(device), y[:args.batch].to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        task.loss(model(xb), yb).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=32)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--norm", choices=["instance", "group"], default="instance")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus hooks on the input layer
    print(f"brain_age_cnn {args.shape}^3 channels {args.channels} norm {args.norm} batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.threads} thread(s), {device}")
    print(f"{'training':<22}{'median s/step':>14}{'min s/step':>12}{'x non-private':>15}")
    steps: dict[str, Callable[[], float]] = {}
    for mode in (None, *MODES):
        label = "non-private" if mode is None else f"dp_sgd {mode}"
        try:
            steps[label] = make_step(mode, args, device)
            steps[label]()  # fails here if Opacus cannot run this mode on this model
        except Exception as exc:  # say so, keep the other rows
            print(f"{label:<22}fails: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}")
            steps.pop(label, None)
    times: dict[str, list[float]] = {label: [] for label in steps}
    for i in range(args.warmup + args.steps):
        for label, step in steps.items():
            seconds = step()
            if i >= args.warmup:
                times[label].append(seconds)
    base = statistics.median(times["non-private"])
    for label, t in times.items():
        median = statistics.median(t)
        print(f"{label:<22}{median:>14.4f}{min(t):>12.4f}{median / base:>15.2f}")


if __name__ == "__main__":
    main()
