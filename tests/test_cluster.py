"""fedsim on a real Ray cluster on loopback: a scenario submitted as a Ray job, clients on
fractional (logical) GPUs, and a run that joins the cluster giving a local run's numbers.

The cluster is started here (`ray start --head` with two logical GPUs: placement only, CUDA stays
absent) and stopped by its own process group, never by `ray stop` (which would stop every Ray on
the machine). Run with `make test-cluster` (CI runs it after the default suite)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml

from fedsim.loading import validate_scenario
from fedsim.run_folder import VOLATILE_KEYS, RunFolder
from fedsim.runner import run_scenario
from tests.conftest import REPO, tiny_scenario

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.e2e]
pytest.importorskip("ray.dashboard.modules.job.sdk", reason="needs ray[default]: pip install 'fedsim[cluster]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head node with 2 CPUs and 2 logical GPUs on 127.0.0.1; yields (GCS address, dashboard address)."""
    ports = {flag: _free_port() for flag in ("--port", "--dashboard-port", "--ray-client-server-port",
                                             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
               "--num-gpus", "2", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
               "--temp-dir", temp, *[str(x) for item in ports.items() for x in item]]
    head = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    gcs, dashboard = f"127.0.0.1:{ports['--port']}", f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        _wait_for_jobs_api(dashboard, head)
        yield gcs, dashboard
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # every process `ray start` began shares its group
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_jobs_api(dashboard: str, head: subprocess.Popen, timeout: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start exited"
        try:
            JobSubmissionClient(dashboard).list_jobs()
            return
        except Exception:  # the dashboard is not up yet
            time.sleep(1)
    raise TimeoutError("the loopback cluster's job server did not come up")


def _idle(gcs: str, timeout: float = 60) -> None:
    """Wait until the cluster holds nothing (a finished run's actors are released a moment later)."""
    import ray

    ray.init(address=gcs, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
            assert time.monotonic() < deadline, "the cluster stayed busy"
            time.sleep(0.5)
    finally:
        ray.shutdown()


def test_a_scenario_submitted_as_a_ray_job_writes_the_run_folder(cluster, tmp_path: Path):
    """From a folder that holds only the scenario, as a user's project would: the job runs the
    fedsim installed on the cluster (here the same environment)."""
    _, dashboard = cluster
    project = tmp_path / "project"
    (project / "scenarios").mkdir(parents=True)
    shutil.copy(REPO / "scenarios/quickstart.yaml", project / "scenarios")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fedsim", "submit", "scenarios/quickstart.yaml", "--address",
                           dashboard, "--set", "federation.rounds=2", "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, cwd=project)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted Ray job raysubmit_" in proc.stdout and "[round 2/2]" in proc.stdout
    run = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run folder: "))
    assert run.parent == tmp_path / "runs/quickstart"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["engine"]["cluster"] == "auto" and summary["engine"]["gpus"] == 2  # the job's cluster, joined
    assert (run / "report.md").is_file() and (run / "model.safetensors").is_file()
    print(f"job submitted and finished in {took:.0f} s")


def test_a_job_that_fails_exits_1_naming_the_job(cluster, tmp_path: Path):
    _, dashboard = cluster
    proc = subprocess.run([sys.executable, "-m", "fedsim", "submit", "scenarios/quickstart.yaml", "--address",
                           dashboard, "--set", "federation.rounds=1", "--set", "resources.num_cpus=64",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resources.num_cpus: 64 CPU per client, but the largest node has 2" in proc.stdout
    assert proc.stderr.strip().startswith("fedsim: error: Ray job raysubmit_") and "FAILED" in proc.stderr


def _placement(run_dir: Path) -> tuple[dict[float, set[float]], int]:
    """GPU id -> the actor processes seen on it (training or evaluating), and the most clients that
    trained at once."""
    records = RunFolder(run_dir).metrics()
    train = [r for r in records if r.get("kind") == "train"]
    actors: dict[float, set[float]] = defaultdict(set)
    for r in records:
        if r.get("kind") in ("train", "evaluate"):
            actors[r["ray_gpu"]].add(r["worker_pid"])
    spans = sorted((r["started_at"], r["started_at"] + r["seconds"]) for r in train)
    at_once = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    return dict(actors), at_once


@pytest.mark.parametrize("fraction, clients", [(0.5, 4), (0.25, 8)])
def test_fractional_gpus_put_one_over_the_fraction_clients_on_each_gpu(cluster, tmp_path: Path, fraction, clients):
    gcs, _ = cluster
    _idle(gcs)
    raw = tiny_scenario(data={"n_subjects": 12 * clients, "sites": clients},
                        federation={"clients": clients, "rounds": 2, "local_steps": 10},
                        resources={"ray_address": gcs, "num_gpus": fraction, "num_cpus": fraction})
    logs: list[str] = []
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=logs.append)
    assert result.error is None and result.summary["status"] == "completed", result.error
    actors, at_once = _placement(result.run_dir)
    per_gpu = round(1 / fraction)
    assert result.summary["engine"]["actors"] == 2 * per_gpu == clients  # the pool: what two GPUs hold
    assert set(actors) <= {0.0, 1.0}  # every client was on one of Ray's two logical GPUs
    assert all(len(pids) <= per_gpu for pids in actors.values()), actors  # never more on a GPU than fit
    assert sum(len(pids) for pids in actors.values()) > 2, actors  # so some GPU was shared
    # (which actors get work is up to timing: Flower hands the next client to the actor that has just
    # finished, so a GPU can show fewer actors than fit)
    if not torch.cuda.is_available():
        assert sum("CUDA is absent" in line for line in logs) == 1  # said once; the clients trained on CPU
    print(f"num_gpus {fraction}: GPU -> actors {dict((g, len(p)) for g, p in actors.items())}, "
          f"{at_once} clients at once")


def test_a_run_on_the_cluster_gives_a_local_runs_metrics(cluster, tmp_path: Path):
    gcs, _ = cluster
    _idle(gcs)
    local = run_scenario(validate_scenario(tiny_scenario()), out_dir=tmp_path / "local", log=lambda _: None)
    joined = run_scenario(validate_scenario(tiny_scenario(resources={"ray_address": gcs})),
                          out_dir=tmp_path / "cluster", log=lambda _: None)
    assert joined.summary["engine"]["cluster"] == gcs and local.summary["engine"]["cluster"] == "local"

    def values(run):
        return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in RunFolder(run.run_dir).metrics()]

    assert values(local) == values(joined)


def test_a_sweep_on_the_cluster_runs_its_points_as_jobs_side_by_side(cluster, tmp_path: Path):
    gcs, dashboard = cluster
    _idle(gcs)
    project = tmp_path / "project"
    (project / "scenarios").mkdir(parents=True)
    raw = tiny_scenario(federation={"rounds": 1}, resources={"num_cpus": 0.5})  # a point takes 1 of the 2 CPUs
    (project / "scenarios/tiny.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "fedsim", "sweep", "scenarios/tiny.yaml", "--grid",
                           "federation.lr=0.001,0.01", "--address", dashboard, "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=600, cwd=project)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (folder,) = (tmp_path / "runs/tiny-sweep").iterdir()
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [(r["federation.lr"], r["status"]) for r in rows] == [("0.001", "completed"), ("0.01", "completed")], rows
    spans = []
    for r in rows:
        train = [m for m in RunFolder(Path(r["run"])).metrics() if m.get("kind") == "train"]
        assert json.loads((Path(r["run"]) / "summary.json").read_text())["engine"]["cluster"] == "auto"
        spans.append((min(m["started_at"] for m in train), max(m["started_at"] + m["seconds"] for m in train)))
    # each point fits in one of the two CPUs, so they usually train side by side; not asserted: when one
    # job's driver comes up late (two drivers importing torch on two busy cores), they run one after the other
    print(f"sweep points trained over {spans} (overlap: {max(a for a, _ in spans) < min(b for _, b in spans)})")
    assert "| 0.010 | completed |" in (folder / "sweep.md").read_text()
