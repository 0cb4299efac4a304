"""The checkpoint file, rewinding a run folder to it, and `--resume`'s refusals (no Ray here)."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedsim.loading import validate_scenario
from fedsim.resume import first_difference
from fedsim.run_folder import RunFolder
from fedsim.scenario import FederationConfig, scenario_fingerprint
from fedsim.server.checkpoint import (
    Checkpoint,
    ClientState,
    capture_rng,
    restore_rng,
    restore_strategy,
    strategy_state,
)
from fedsim.server.strategies import build_strategy
from tests.conftest import REPO, tiny_scenario


def _checkpoint(round_: int = 3) -> Checkpoint:
    return Checkpoint(round=round_, global_state={"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)},
                      strategy={"m_t": {"w": torch.ones(2, 3)}},
                      clients={0: ClientState({"0.steps": 12.0, "0.noise_multiplier": 0.5}),
                               1: ClientState({}, {"0.codec.weight": torch.randn(4)})},
                      rng=capture_rng())


def test_a_checkpoint_round_trips_and_restores_every_rng(tmp_path: Path):
    saved = _checkpoint()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    saved.write(tmp_path / "c.safetensors", "abc")
    restore_rng(saved.rng)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    back = Checkpoint.read(tmp_path / "c.safetensors")
    assert back.round == 3 and back.fingerprint == "abc"
    assert torch.equal(back.global_state["w"], saved.global_state["w"])
    assert torch.equal(back.strategy["m_t"]["w"], saved.strategy["m_t"]["w"])
    assert back.clients[0].numbers == saved.clients[0].numbers
    assert torch.equal(back.clients[1].tensors["0.codec.weight"], saved.clients[1].tensors["0.codec.weight"])


def test_fedadam_moments_are_strategy_state():
    adam = build_strategy(FederationConfig(clients=2, strategy="fedadam"))
    assert strategy_state(adam) == {}  # before round 1: nothing learned yet
    adam.m_t, adam.v_t = {"w": np.full(3, 0.5, np.float32)}, {"w": np.full(3, 2.0, np.float32)}
    state = strategy_state(adam)
    assert set(state) == {"m_t", "v_t"}
    fresh = build_strategy(FederationConfig(clients=2, strategy="fedadam"))
    restore_strategy(fresh, state)
    assert np.array_equal(fresh.v_t["w"], adam.v_t["w"]) and fresh.v_t["w"].dtype == np.float32


def test_checkpoint_header_is_read_without_torch_and_bad_files_are_refused(tmp_path: Path):
    run = RunFolder(tmp_path)
    assert run.checkpoint_meta() is None
    _checkpoint(4).write(run.checkpoint_file, "abc")
    assert run.checkpoint_meta()["round"] == 4
    for damaged in (pickle.dumps({"w": torch.zeros(2)}), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......",
                    b""):
        run.checkpoint_file.write_bytes(damaged)
        with pytest.raises(ValueError, match="not a fedsim checkpoint"):
            run.checkpoint_meta()


def test_rewind_forgets_the_round_in_flight(tmp_path: Path):
    run = RunFolder(tmp_path)
    for r in range(5):
        run.append_metrics(round=r, kind="server", test_mae=float(r))
    run.append_metrics(round=4, kind="client_error", client=1, phase="train", error="boom")
    run.append_metrics(kind="note")
    for name in ("round003_client000", "round004_client001", "round004_aggregate", "round1000_client000"):
        run.write_observation(name, update={"w": torch.zeros(1)}, meta={"kind": "weights"})
    run.write_truth("round004_client001", inputs=torch.zeros(1), targets=torch.zeros(1), rows=[1])
    run.write_truth("round003_client000", inputs=torch.zeros(1), targets=torch.zeros(1), rows=[1])
    run.rewind(3)
    assert [(r.get("round"), r["kind"]) for r in run.metrics()] == [(0, "server"), (1, "server"), (2, "server"),
                                                                    (3, "server"), (None, "note")]
    assert [o.name for o in run.observations()] == ["round003_client000"]
    assert sorted(p.name for p in (tmp_path / "private").iterdir()) == ["round003_client000.json",
                                                                         "round003_client000.safetensors"]


def test_first_difference_names_the_key_path():
    a = {"federation": {"rounds": 6, "lr": 0.1}, "defenses": [{"name": "dp_sgd", "params": {"noise": 1.0}}]}
    assert first_difference(a, a) is None
    b = {"federation": {"rounds": 6, "lr": 0.1}, "defenses": [{"name": "dp_sgd", "params": {"noise": 2.0}}]}
    assert first_difference(a, b) == ("defenses.0.params.noise", 1.0, 2.0)
    assert first_difference(a, {**a, "extra": 1}) == ("extra", None, 1)
    assert first_difference(a, {**a, "defenses": []})[0] == "defenses"


def _fedsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_in_one_line_and_leaves_the_folder_alone(tmp_path: Path):
    raw = tiny_scenario(federation={"rounds": 4})
    scenario = validate_scenario(raw)
    run = RunFolder.create(scenario, tmp_path / "runs")
    run.append_metrics(round=0, kind="server", test_mae=1.0)
    given = tmp_path / "tiny.yaml"
    given.write_text(yaml.safe_dump(raw))

    no_checkpoint = _fedsim("run", "--resume", str(run.path))
    _checkpoint(2).write(run.checkpoint_file, scenario_fingerprint(scenario))
    before = _snapshot(run.path)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(tiny_scenario(federation={"rounds": 5})))
    cases = {
        "not a run folder": _fedsim("run", "--resume", str(tmp_path)),
        "has no checkpoint": no_checkpoint,
        "federation.rounds is 4 there, 5 here": _fedsim("run", str(other), "--resume", str(run.path)),
        "federation.lr is": _fedsim("run", "--resume", str(run.path), "--set", "federation.lr=0.5"),
        "a resumed run stays in its own folder": _fedsim("run", "--resume", str(run.path), "--out", str(tmp_path)),
    }
    for expected, proc in cases.items():
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (expected, proc.stderr)
    assert _snapshot(run.path) == before

    run.write_summary({"status": "completed"})  # a run that finished has nothing left to do
    finished = _fedsim("run", str(given), "--resume", str(run.path))
    assert finished.returncode == 0 and "nothing to resume" in finished.stdout, finished.stderr
    run.checkpoint_file.write_bytes(pickle.dumps({"round": 2}))
    damaged = _fedsim("run", str(given), "--resume", str(run.path))
    assert damaged.returncode == 2 and "not a fedsim checkpoint" in damaged.stderr


def test_torn_files_never_break_a_reader(tmp_path: Path):
    """A crash can cut any write short: every cut of a metrics line, of a checkpoint and of a tensor
    file is either read as it was before or refused in one line naming the file."""
    from fedsim.run_folder import DamagedFileError, load_tensors, save_tensors

    rng = random.Random(0)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.append_metrics(round=1, kind="server", test_mae=3.0)
    whole = (run.path / "metrics.jsonl").read_bytes()
    line = b'{"round": 2, "kind": "server", "test_mae": 2.5}\n'
    for cut in sorted(rng.sample(range(1, len(line) - 1), 12)):
        (run.path / "metrics.jsonl").write_bytes(whole + line[:cut])
        assert run.metrics() == [{"round": 1, "kind": "server", "test_mae": 3.0}]
        run.rewind(1)  # what a resume does first: the torn line goes, the next record stands alone
        run.append_metrics(round=2, kind="server", test_mae=2.5)
        assert [r["round"] for r in run.metrics()] == [1, 2]
        (run.path / "metrics.jsonl").write_bytes(whole)

    _checkpoint().write(run.checkpoint_file, "abc")
    save_tensors(tmp_path / "t.safetensors", {"w": torch.randn(64)})
    for path in (run.checkpoint_file, tmp_path / "t.safetensors"):
        data = path.read_bytes()
        for cut in sorted(rng.sample(range(len(data)), 20)):
            path.write_bytes(data[:cut])
            with pytest.raises(DamagedFileError, match=path.name):
                Checkpoint.read(path) if path == run.checkpoint_file else load_tensors(path)
        path.write_bytes(data)
    data = run.checkpoint_file.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    for cut in sorted(rng.sample(range(header_end), 20)):  # a cut header is never taken for a checkpoint
        run.checkpoint_file.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a fedsim checkpoint"):
            run.checkpoint_meta()
