"""How many scans an exported network can carry, and at what cost: the capacity curve of the
mantissa hiding (data lakes, `compress_and_hide` with `hide: mantissa`).

On lake 0 of scenarios/data_lake_stealing.yaml (68 scans at 32^3, 3D UNet tissue segmentation,
10 epochs, trained once as the honest recipe would): the exported network's test Dice when the low
k bits of every float32 weight are overwritten by random bits (a full payload); the quantised
voxels codec's PSNR on the lake's scans at b bits per voxel; and the scans that fit beside the
marker, count and template (16 bits per voxel) for networks of three sizes, at k bits per weight
and b bits per voxel. Then the low-bit test (`export_bit_test`, defaults) on 20 honest exports of lake
0 (seeds 0-19, 2 epochs each) and on the same exports carrying the mantissa payload (5-bit voxels
at 4, 8 and 16 low bits): its false alarms and detections. Prints markdown tables and writes a PNG.

    python benchmarks/stealing_capacity.py [--out docs/figures/stealing_capacity.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from fedsim.attacks.data_stealing import stego
from fedsim.attacks.data_stealing.codec import CodecParams, make_codec
from fedsim.attacks.data_stealing.recipe import CompressParams, fitting_scans
from fedsim.attacks.metrics import psnr, ssim
from fedsim.experiment import prepare
from fedsim.loading import load_scenario
from fedsim.scenario import TaskConfig
from fedsim.settings.recipes import LakeRun, train_agreed
from fedsim.tasks.segmentation import SegmentationTask
from fedsim.training import predict

REPO = Path(__file__).resolve().parents[1]
BITS_PER_WEIGHT = (1, 2, 4, 8, 12, 16, 20, 23)
BITS_PER_VOXEL = (2, 3, 4, 5, 6, 8)
NETWORKS = ([8, 16, 32, 64], [16, 32, 64, 128], [32, 64, 128, 256])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "stealing_capacity.png")
    args = ap.parse_args()
    scenario = load_scenario(REPO / "scenarios" / "data_lake_stealing.yaml")
    experiment = prepare(scenario, log=lambda _: None)
    x, y = experiment.tensors(list(experiment.split.clients[0].train))
    torch.manual_seed(0)
    model = experiment.task.build_model()
    config = scenario.federation.model_copy(update={"local_epochs": 10, "local_steps": None})
    honest = train_agreed(model, x, y, run=LakeRun(lake=0, task=experiment.task, config=config, seed=0))
    gen = np.random.default_rng(0)

    def dice(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        return experiment.task.metrics(predict(model, experiment.x_test), experiment.y_test)["dice"]

    base = dice(honest)
    print(f"lake 0: {len(x)} scans at {tuple(x.shape[2:])}; honest export: test Dice {base:.4f}\n")
    print("| low bits overwritten per weight | test Dice | change |\n|---|---|---|")
    costs = {}
    for k in BITS_PER_WEIGHT:
        payload = torch.from_numpy(gen.random(stego.capacity(honest, k)) < 0.5)
        costs[k] = dice(stego.embed(honest, payload, k)) - base
        print(f"| {k} | {base + costs[k]:.4f} | {costs[k]:+.5f} |")
    print("\n| bits per voxel | PSNR dB | SSIM |\n|---|---|---|")
    quality = {}
    for b in BITS_PER_VOXEL:
        codec = make_codec(CodecParams(kind="voxels", bits=b), spatial_dims=3)
        codec.fit(x, seed=0)
        rebuilt = codec.decode(codec.encode(x))
        quality[b] = (float(psnr(rebuilt, x).mean()), float(ssim(rebuilt, x).mean()))
        print(f"| {b} | {quality[b][0]:.1f} | {quality[b][1]:.3f} |")
    shape = tuple(x.shape[1:])
    print("\nScans that fit (marker, count, template in half precision, then b bits per voxel):\n")
    print("| network (UNet channels) | weights | k bits/weight | " + " | ".join(f"b={b}" for b in BITS_PER_VOXEL) +
          " |\n|---|---|---|" + "---|" * len(BITS_PER_VOXEL))
    curves = {}
    for channels in NETWORKS:
        task = SegmentationTask(config=TaskConfig(name="segmentation", model={"name": "unet", "channels": channels,
                                                                               "norm": "instance"}))
        task.tensors(experiment.cohort, [0])
        state = task.build_model().state_dict()
        weights = sum(v.numel() for v in state.values() if v.dtype == torch.float32)
        for k in (4, 8, 16):
            fits = [fitting_scans(CompressParams(hide="mantissa", bits_per_weight=k,
                                                 codec=CodecParams(kind="voxels", bits=b)), state, shape)
                    for b in BITS_PER_VOXEL]
            curves[str(channels), k] = fits
            print(f"| {channels} | {weights:,} | {k} | " + " | ".join(str(f) for f in fits) + " |")
    _figure(curves, quality, args.out)
    print(f"\nfigure: {args.out}")
    _bit_test(experiment, x, y, scenario)


def _bit_test(experiment, x, y, scenario, seeds: int = 20) -> None:
    """False alarms of the low-bit test on honest exports, and detections of mantissa payloads."""
    from fedsim.attacks.data_stealing.recipe import _payload
    from fedsim.defenses.base import DEFENSES, ExportRefused, ExportRound

    gate = DEFENSES.get("export_bit_test")()
    codec = make_codec(CodecParams(kind="voxels", bits=5), spatial_dims=3)
    codec.fit(x, seed=0)
    config = scenario.federation.model_copy(update={"local_epochs": 2, "local_steps": None})
    counts = {"honest": 0, **{f"mantissa k={k}": 0 for k in (4, 8, 16)}}

    def refused(state: dict[str, torch.Tensor]) -> bool:
        try:
            gate.transform_export(state, ctx=ExportRound(lake=0, task=experiment.task, agreed={},
                                                          rng=np.random.default_rng(0)))
        except ExportRefused:
            return True
        return False

    for seed in range(seeds):
        torch.manual_seed(seed)
        model = experiment.task.build_model()
        honest = train_agreed(model, x, y, run=LakeRun(lake=0, task=experiment.task, config=config, seed=seed))
        counts["honest"] += refused(honest)
        for k in (4, 8, 16):
            params = CompressParams(hide="mantissa", bits_per_weight=k, codec=CodecParams(kind="voxels", bits=5))
            n = min(len(x), fitting_scans(params, honest, tuple(x.shape[1:])))
            counts[f"mantissa k={k}"] += refused(stego.embed(honest, _payload(codec, codec.encode(x[:n])), k))
    print(f"\nexport_bit_test (bits 8, chunk 4096, alpha 1e-6) on {seeds} exports of lake 0 (seeds 0-{seeds - 1}, "
          "2 epochs):\n\n| export | refused |\n|---|---|")
    for name, hits in counts.items():
        print(f"| {name} | {hits} of {seeds} |")


def _figure(curves: dict, quality: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (channels, k), fits in curves.items():
        if k == 8:
            ax.plot(BITS_PER_VOXEL, [max(f, 0.5) for f in fits], marker="o", label=f"UNet {channels}, 8 low bits")
    ax.plot(BITS_PER_VOXEL, [max(f, 0.5) for f in curves[str(NETWORKS[1]), 16]], marker="s", linestyle="--",
            label=f"UNet {NETWORKS[1]}, 16 low bits")
    ax.set_yscale("log")
    ax.set_xticks(BITS_PER_VOXEL, [f"{b}\n{quality[b][0]:.0f} dB" for b in BITS_PER_VOXEL], fontsize=8)
    ax.set_xlabel("bits per voxel (quantised difference from the lake's mean scan), and its PSNR")
    ax.set_ylabel("32^3 scans hidden in the export")
    ax.legend(fontsize=7)
    ax.set_title("Mantissa hiding: capacity against fidelity", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
