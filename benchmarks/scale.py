"""How does a federation scale with simulated clients? 10, 100 and 1,000 hospitals or devices, a
small model, a few rounds, a share of the clients training each round; prints a table.

Per federation size: clients, clients trained per round, seconds per round (median over rounds),
seconds per training client, the start-up (until the initial global evaluation), the peak memory of
the driver (this process) and of the client actors together (Ray workers, sampled from /proc while
the run goes). Each client holds 3 scans at 16^3 (2 train, 1 validation); the brain-age CNN has
channels [4, 8]; 2 local steps of batch 2; Flower's FedAvg samples `--per-round` of the clients to
train and to evaluate.

    python benchmarks/scale.py                                   # 10 / 100 / 1000 clients x 5 rounds
    python benchmarks/scale.py --clients 10 100 --rounds 3 --per-round 0.1
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario

ACTOR_NAME = b"ClientAppActor"


def scenario(clients: int, rounds: int, per_round: float, seed: int) -> dict:
    return {
        "name": f"scale{clients}", "seed": seed,
        "data": {"n_subjects": 3 * clients + 40, "shape": 16, "sites": 2, "test_fraction": 40 / (3 * clients + 40),
                 "val_fraction": 0.34, "partition": {"by": "iid", "min_size": 2}},
        "task": {"model": {"channels": [4, 8]}},
        "federation": {"clients": clients, "rounds": rounds, "local_steps": 2, "batch_size": 2,
                       "fraction_train": per_round, "fraction_evaluate": per_round},
        "resources": {"num_cpus": 1},
        "output": {"save_model": False},
    }


def actors_rss_mb() -> float:
    """Resident memory of every Ray client actor on this machine, in MB (Linux /proc)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if ACTOR_NAME not in (proc / "cmdline").read_bytes():
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class PeakSampler(threading.Thread):
    def __init__(self, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self.done = every, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, actors_rss_mb())
            self.done.wait(self.every)


def measure(clients: int, args: argparse.Namespace) -> dict:
    sc = validate_scenario(scenario(clients, args.rounds, args.per_round, args.seed))
    sampler = PeakSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_scenario(sc, out_dir=Path(tmp), log=lambda _: None)
        total = time.perf_counter() - t0
        records = RunFolder(result.run_dir).metrics()
    sampler.done.set()
    sampler.join()
    server = sorted((r for r in records if r["kind"] == "server"), key=lambda r: r["round"])
    offset = total - result.summary["wall_s"]
    marks = [r["elapsed_s"] + offset for r in server]
    rounds = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    trained = [sum(1 for r in records if r["kind"] == "train" and r["round"] == k) for k in range(1, args.rounds + 1)]
    per_round = statistics.median(rounds) if rounds else float("nan")
    return {"clients": clients, "train/round": statistics.median(trained) if trained else 0,
            "s/round": per_round, "s/client": per_round / max(1, statistics.median(trained) if trained else 1),
            "start-up s": marks[0] if marks else float("nan"), "total s": total,
            "driver peak MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "actors peak MB": sampler.peak, "status": result.summary["status"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", nargs="*", type=int, default=[10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=float, default=0.1, help="share of clients that train (and evaluate) a round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = []
    for n in args.clients:
        rows.append(measure(n, args))
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
