"""What does running on Flower + Ray cost over a plain loop? Same workload, two ways; prints a table.

Workload: the tiny brain-age federation (clients x rounds x local steps at a chosen size), run
(a) through fedsim (Flower simulation engine, Ray actors) and (b) as a single-process loop that does
the same local training and FedAvg averaging. Reports start-up time (until the initial global
evaluation), steady-state seconds per round (median over rounds >= 2) and their ratio.

    python benchmarks/engine_overhead.py [--clients 3 --rounds 6 --steps 10 --shape 32 --repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedsim.data.datasets import load_dataset
from fedsim.experiment import prepare
from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import Scenario
from fedsim.seeding import derive_seed
from fedsim.training import predict, train_local


def scenario(args: argparse.Namespace) -> Scenario:
    return validate_scenario({
        "name": "bench", "seed": 0,
        "data": {"n_subjects": 20 * args.clients, "shape": args.shape, "sites": args.clients},
        "task": {"model": {"channels": [8, 16, 32, 64]}},
        "federation": {"clients": args.clients, "rounds": args.rounds, "local_steps": args.steps, "batch_size": 8},
        "resources": {"num_cpus": 1},
        "output": {"save_model": False},
    })


def run_fedsim(sc: Scenario) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_scenario(sc, out_dir=Path(tmp), log=lambda _: None)
        total = time.perf_counter() - t0
        server = [r for r in RunFolder(result.run_dir).metrics() if r["kind"] == "server"]
    offset = total - result.summary["wall_s"]  # time before the record started (cohort load)
    elapsed = [r["elapsed_s"] + offset for r in sorted(server, key=lambda r: r["round"])]
    return elapsed[0], list(np.diff(elapsed))


def run_plain(sc: Scenario, threads: int) -> tuple[float, list[float]]:
    """The same rounds in one process: sequential clients, FedAvg by hand."""
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    prep = prepare(sc, log=lambda _: None)  # the same cohort, split and task as fedsim's runner
    task, x_test, y_test = prep.task, prep.x_test, prep.y_test
    data = [task.tensors(prep.cohort, c.train) for c in prep.split.clients]
    global_model = task.build_model()
    task.metrics(predict(global_model, x_test), y_test)
    marks = [time.perf_counter() - t0]
    for rnd in range(1, sc.federation.rounds + 1):
        states, weights = [], []
        for pid, (x, y) in enumerate(data):
            model = task.build_model()
            model.load_state_dict(global_model.state_dict())
            rng = np.random.default_rng(derive_seed(sc.seed, "train", rnd, pid))
            res = train_local(model, x, y, task=task, config=sc.federation, rng=rng)
            states.append(model.state_dict())
            weights.append(res.examples)
        w = np.array(weights, dtype=np.float64) / sum(weights)
        global_model.load_state_dict({k: sum(float(wi) * s[k].double()
                                             for wi, s in zip(w, states, strict=True)).to(states[0][k].dtype)
                                      for k in states[0]})
        task.metrics(predict(global_model, x_test), y_test)
        marks.append(time.perf_counter() - t0)
    return marks[0], list(np.diff(marks))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--shape", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    sc = scenario(args)
    load_dataset(sc.data, seed=sc.seed)  # warm the cohort cache so neither side pays for generation
    rows = []
    for name, fn in (("fedsim (Flower+Ray, 1 CPU/client)", lambda: run_fedsim(sc)),
                     ("plain loop, 1 thread", lambda: run_plain(sc, 1)),
                     ("plain loop, 2 threads", lambda: run_plain(sc, 2))):
        starts, rounds = [], []
        for _ in range(args.repeats):
            start, per_round = fn()
            starts.append(start)
            rounds.append(statistics.median(per_round[1:] or per_round))
        rows.append((name, statistics.median(starts), statistics.median(rounds)))
    print(f"\nworkload: {args.clients} clients x {args.rounds} rounds x {args.steps} local steps, "
          f"batch 8, {args.shape}^3, {args.repeats} repeat(s); medians\n")
    print(f"| {'engine':<36} | start-up s | s / round (steady) | fedsim s/round ÷ this |")
    print(f"|{'-' * 38}|-----------:|-------------------:|----------------------:|")
    fed_round = rows[0][2]
    for name, start, per_round in rows:
        print(f"| {name:<36} | {start:10.2f} | {per_round:18.3f} | {fed_round / per_round:21.2f} |")


if __name__ == "__main__":
    main()
