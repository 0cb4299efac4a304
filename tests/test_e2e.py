"""End-to-end runs through the real Flower simulation engine on Ray (2 clients x 2 rounds at 16^3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from fedsim.loading import validate_scenario
from fedsim.markdown import cell
from fedsim.run_folder import VOLATILE_KEYS, RunFolder
from fedsim.runner import RunResult, run_scenario
from tests.conftest import REPO, tiny_scenario

pytestmark = pytest.mark.e2e


def _values(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in RunFolder(run_dir).metrics()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """One run of the tiny scenario, shared by the tests that compare other runs with it."""
    return run_scenario(validate_scenario(tiny_scenario(reference="centralized")),
                        out_dir=tmp_path_factory.mktemp("tiny"), log=lambda _: None)


def test_federation_runs_and_writes_the_run_folder_deterministically(tmp_path: Path, tiny_run: RunResult):
    first = tiny_run
    second = run_scenario(validate_scenario(tiny_scenario()), out_dir=tmp_path, log=lambda _: None)

    run = first.run_dir
    assert first.error is None and first.failures == []
    for name in ("scenario.yaml", "metrics.jsonl", "metrics.csv", "summary.json", "partitions.json",
                 "model.safetensors", "report.md", "figures/curves.png"):
        assert (run / name).is_file(), name
    records = RunFolder(run).metrics()
    kinds = {(r["kind"], r.get("round"), r.get("client")) for r in records}
    assert {("train", rnd, c) for rnd in (1, 2) for c in (0, 1)} <= kinds
    assert {("evaluate", rnd, c) for rnd in (1, 2) for c in (0, 1)} <= kinds
    assert {("server", rnd, None) for rnd in (0, 1, 2)} <= kinds
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["final"]["mae"] > 0 and summary["baseline_predict_mean"]["mae"] > 0
    assert yaml.safe_load((run / "scenario.yaml").read_text())["federation"]["rounds"] == 2
    assert "head.bias" in load_file(run / "model.safetensors")
    assert "| 2 |" in (run / "report.md").read_text()
    reference = summary["reference"]  # reference: centralized, trained on both clients' 16 scans
    assert reference["train"] == 16 and reference["final"]["mae"] > 0 and (run / "centralized.safetensors").is_file()
    assert reference["final"]["mae"] != summary["final"]["mae"]
    assert f"| centralized reference (pooled training data, same budget) | {cell(reference['final']['mae'])} |" in (
        run / "report.md").read_text()

    assert second.run_dir != run
    assert _values(run) == _values(second.run_dir)
    server = [r["test_mae"] for r in records if r["kind"] == "server"]
    assert server[0] != server[-1]  # the global model changed: training happened


def test_different_seed_changes_results(tmp_path: Path, tiny_run: RunResult):
    a = run_scenario(validate_scenario(tiny_scenario(seed=4)), out_dir=tmp_path, log=lambda _: None)
    assert _values(a.run_dir) != _values(tiny_run.run_dir)


def test_all_clients_failing_ends_the_process_quickly_with_a_clear_error(tmp_path: Path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(tiny_scenario(faults=[{"kind": "raise", "round": 1, "client": c}
                                                             for c in (0, 1)])))
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(scenario), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedsim: error: run failed:") and "every client failed" in last


def test_faulty_clients_cost_their_round_never_the_run(tmp_path: Path):
    """One client raises, one hangs far past the round timeout (600 s), one sends NaN, one a wrongly
    shaped array: each round goes on with the other client, each failure is recorded with its cause."""
    scenario = tmp_path / "faults.yaml"
    scenario.write_text(yaml.safe_dump(tiny_scenario(
        federation={"rounds": 5}, resources={"timeout_s": 8},
        faults=[{"kind": "raise", "round": 1, "client": 0}, {"kind": "hang", "round": 2, "client": 1, "seconds": 600},
                {"kind": "nan", "round": 3, "client": 0}, {"kind": "bad_shape", "round": 4, "client": 1}])))
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(scenario), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "4 client update(s) failed" in proc.stderr, proc.stderr[-2000:]
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed_with_client_failures" and summary["rounds_completed"] == 5
    records = RunFolder(run_dir).metrics()
    errors = {(r["round"], r["client"]): r["error"] for r in records if r["kind"] == "client_error"}
    assert errors.keys() == {(1, 0), (2, 1), (3, 0), (4, 1)}
    assert errors[1, 0].startswith("InjectedFaultError: injected fault")
    assert errors[2, 1] == "Timeout: no reply within 8s (resources.timeout_s)"
    assert "NaN" in errors[3, 0] and "has shape" in errors[4, 1]
    trained = {(r["round"], r["client"]) for r in records if r["kind"] == "train"}
    assert trained == {(r, c) for r in range(1, 6) for c in (0, 1)} - errors.keys()
    model = load_file(run_dir / "model.safetensors")
    assert all(bool(v.isfinite().all()) for v in model.values() if v.is_floating_point())  # no NaN got in
    assert "InjectedFaultError" in (run_dir / "report.md").read_text()
    assert "Traceback" not in proc.stdout + proc.stderr  # Flower's own log, with the traceback, stays in flower.log
    assert "InjectedFaultError" in (run_dir / "flower.log").read_text()
