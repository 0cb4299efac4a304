"""Kill a federation with SIGKILL mid-run, resume it, and get exactly the uninterrupted run's results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fedsim.run_folder import VOLATILE_KEYS, RunFolder
from tests.conftest import REPO, tiny_scenario

pytestmark = pytest.mark.e2e

# the hardest case in one run: server-side Adam moments, Flower's seeded sampling of 1 of 2 clients a
# round (Python's RNG), DP-SGD's privacy spent (client state) and recorded observations
KILL_SCENARIO = tiny_scenario(
    name="killed",
    federation={"rounds": 6, "strategy": "fedadam", "fraction_train": 0.5},
    defenses=[{"name": "dp_sgd", "params": {"noise_multiplier": 0.5, "max_grad_norm": 1.0}}],
    server={"capture": True, "targets": {"rounds": [2, 5]}},
)


def _fedsim(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedsim", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _checkpointed_round(out: Path) -> int:
    for folder in out.glob("*/*"):
        meta = RunFolder(folder).checkpoint_meta()  # never half-written: it is renamed into place
        if meta is not None:
            return int(meta["round"])
    return -1


def kill_after(args: list[str], out: Path, done: callable, timeout: float = 240) -> float:
    """Start `fedsim ARGS`, SIGKILL its whole process group once `done()`; returns the seconds it ran."""
    proc, start = _fedsim(*args), time.monotonic()
    while not done():
        assert proc.poll() is None, f"it ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() - start < timeout
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.monotonic() - start


def finish(*args: str) -> tuple[str, float]:
    start = time.monotonic()
    proc = _fedsim(*args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out, time.monotonic() - start


def values(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in RunFolder(run).metrics()]


def test_a_killed_federation_resumes_to_the_uninterrupted_results(tmp_path: Path):
    scenario = tmp_path / "killed.yaml"
    scenario.write_text(yaml.safe_dump(KILL_SCENARIO))
    _, whole_s = finish("run", str(scenario), "--out", str(tmp_path / "whole"))
    (whole,) = (tmp_path / "whole").glob("*/*")

    killed_s = kill_after(["run", str(scenario), "--out", str(tmp_path / "cut")], tmp_path / "cut",
                          lambda: _checkpointed_round(tmp_path / "cut") >= 3)
    (cut,) = (tmp_path / "cut").glob("*/*")
    assert not (cut / "summary.json").exists()
    stopped_at = _checkpointed_round(tmp_path / "cut")
    log, resumed_s = finish("run", "--resume", str(cut))
    assert f"resuming from round {stopped_at}/6" in log

    assert values(cut) == values(whole)  # every round's metrics, DP-SGD's epsilon included, timing aside
    spanning = 0
    for client in (0, 1):  # each client's privacy spent went on growing after the resume, not restarted
        spent = [(r["round"], r["dp_epsilon"]) for r in RunFolder(cut).metrics()
                 if r.get("kind") == "train" and r["client"] == client]
        assert [e for _, e in spent] == sorted(e for _, e in spent) and len({e for _, e in spent}) == len(spent)
        spanning += any(rnd > stopped_at for rnd, _ in spent) and any(rnd <= stopped_at for rnd, _ in spent)
    assert spanning  # a client trained before and after the stop: its restored state mattered
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    names = sorted(o.name for o in RunFolder(whole).observations())
    assert names and names == sorted(o.name for o in RunFolder(cut).observations())
    summary = RunFolder(cut).summary()
    assert summary["status"] == "completed" and summary["rounds_completed"] == 6
    assert summary["final"] == RunFolder(whole).summary()["final"]
    print(f"\nkill at round {stopped_at}: whole run {whole_s:.0f}s, killed after {killed_s:.0f}s, "
          f"resume {resumed_s:.0f}s, lost {killed_s + resumed_s - whole_s:.0f}s")


@pytest.mark.slow
def test_a_killed_sweep_keeps_its_finished_points_and_resumes_the_stopped_one(tmp_path: Path):
    scenario = tmp_path / "sweep.yaml"
    scenario.write_text(yaml.safe_dump(tiny_scenario(name="swept", federation={"rounds": 3},
                                                     sweep={"grid": {"federation.lr": [0.1, 0.05]}})))
    finish("sweep", str(scenario), "--out", str(tmp_path / "whole"))
    (whole,) = (tmp_path / "whole").glob("*/*")

    def second_point_checkpointed() -> bool:
        runs = sorted((tmp_path / "cut").glob("*/*/points/*/*"))
        return len(runs) == 2 and (RunFolder(runs[1]).checkpoint_meta() or {}).get("round", -1) >= 1

    kill_after(["sweep", str(scenario), "--out", str(tmp_path / "cut")], tmp_path / "cut", second_point_checkpointed)
    (cut,) = (tmp_path / "cut").glob("*/*")
    first, second = sorted((cut / "points").glob("*/*"))
    kept = (first / "metrics.jsonl").read_bytes()
    log, _ = finish("sweep", str(scenario), "--resume", str(cut))
    assert "already finished" in log and "resuming from round" in log
    assert (first / "metrics.jsonl").read_bytes() == kept  # the finished point was not run again
    assert sorted((cut / "points").glob("*/*")) == [first, second]  # nor the stopped one started afresh

    def table(folder: Path) -> list[dict]:
        import csv

        with open(folder / "sweep.csv") as fh:
            return [{k: v for k, v in row.items() if k not in ("run", "client_s_per_round")}
                    for row in csv.DictReader(fh)]

    assert table(cut) == table(whole)
    for a, b in zip(sorted((whole / "points").glob("*/*")), [first, second], strict=True):
        assert values(a) == values(b)
