"""What does running on Flower + Ray cost over a plain loop? Same workload, two ways; prints a table.

Workload: the tiny brain-age federation (clients x rounds x local steps at a chosen size), run
(a) through fedsim (Flower simulation engine, Ray actors) and (b) as a single-process loop that does
the same local training and FedAvg averaging; fedsim once with one CPU (and thread) per client, two
actors on two cores, and once with two per client, one actor of two threads like the 2-thread
loop. Reports start-up time (until the initial global
evaluation), steady-state seconds per round (median over rounds >= 2) and their ratio. `--warm`
adds fedsim joining a Ray that is already running (`ray start --head` on 127.0.0.1, started and
stopped by the benchmark, via `resources.ray_address`): what a warm Ray saves at start-up.

    python benchmarks/engine_overhead.py [--clients 3 --rounds 6 --steps 10 --shape 32 --repeats 1 --warm]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def warm_ray() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs, in its own process group; yields its GCS address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus",
                             "2", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard",
                             "false", "--temp-dir", temp], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.5)
        time.sleep(3)  # the raylet registers after the GCS answers
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)


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
    p.add_argument("--warm", action="store_true", help="also run fedsim on an already running local Ray")
    args = p.parse_args()
    sc = scenario(args)
    load_dataset(sc.data, seed=sc.seed)  # warm the cohort cache so neither side pays for generation
    rows = []
    two_cpus = sc.model_copy(update={"resources": sc.resources.model_copy(update={"num_cpus": 2.0})})
    engines = [("fedsim (Flower+Ray, 1 CPU/client)", lambda: run_fedsim(sc)),
               ("fedsim, 2 CPUs/client (one actor)", lambda: run_fedsim(two_cpus)),
               ("plain loop, 1 thread", lambda: run_plain(sc, 1)),
               ("plain loop, 2 threads", lambda: run_plain(sc, 2))]
    with warm_ray() if args.warm else contextlib.nullcontext() as address:
        if address:
            joined = sc.model_copy(update={"resources": sc.resources.model_copy(update={"ray_address": address})})
            engines.insert(1, ("fedsim on a warm local Ray", lambda: run_fedsim(joined)))
        for name, fn in engines:
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
