"""The `fedsim` command line: exit codes and one-line errors, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, tiny_scenario


def fedsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_validate_shipped_scenarios():
    proc = fedsim("validate", *[str(p) for p in sorted((REPO / "scenarios").glob("*.yaml"))])
    assert proc.returncode == 0, proc.stderr
    assert "quickstart.yaml: ok" in proc.stdout


def test_bad_input_exits_2_with_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_scenario(federation={"rounds": 0})))
    for args in (("run", str(bad)), ("validate", str(bad)),
                 ("run", str(tmp_path / "missing.yaml")),
                 ("run", str(REPO / "scenarios/quickstart.yaml"), "--set", "federation.strategy=nope")):
        proc = fedsim(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fedsim: error:"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_set_override_reaches_the_error_message():
    proc = fedsim("validate", str(REPO / "scenarios/quickstart.yaml"), "--set", "federation.rounds=-1")
    assert proc.returncode == 2 and "federation.rounds:" in proc.stderr


def test_list_shows_registered_plugins():
    proc = fedsim("list")
    assert proc.returncode == 0
    for name in ("synthetic_brain", "brain_age", "brain_age_cnn", "fedavg", "fedprox", "dirichlet"):
        assert name in proc.stdout
    assert fedsim("list", "strategy").stdout.startswith("strategy:")
    assert fedsim("list", "gizmo").returncode == 2


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_addresses_bad_or_unreachable_fail_in_one_line(tmp_path: Path):
    import importlib.util
    import time

    quickstart = str(REPO / "scenarios/quickstart.yaml")
    for args, says in ((("submit", quickstart, "--address", "head:8265", "--out", "/tmp/runs"),
                        "--address: 'head:8265' is not a Ray dashboard address"),
                       (("run", quickstart, "--set", "resources.ray_address=http://head:8265"),
                        "resources.ray_address: 'http://head:8265' is a dashboard (job) address")):
        proc = fedsim(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    proc = fedsim("submit", quickstart, "--address", "http://head:8265", "--out", "runs")
    assert proc.returncode == 2 and "--out: runs must be an absolute path" in proc.stderr, proc.stderr
    proc = fedsim("sweep", quickstart, "--grid", "federation.lr=0.001,0.01", "--address", "http://head:8265")
    assert proc.returncode == 2 and "--out: None must be an absolute path" in proc.stderr, proc.stderr
    port = _closed_port()
    start = time.monotonic()
    if importlib.util.find_spec("aiohttp"):  # Ray's job client (the cluster extra)
        proc = fedsim("submit", quickstart, "--address", f"http://127.0.0.1:{port}", "--out", str(tmp_path))
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--address: cannot reach the Ray cluster at 127.0.0.1:{port}" in proc.stderr
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(tiny_scenario(resources={"ray_address": f"127.0.0.1:{port}"})))
    proc = fedsim("run", str(tiny), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"resources.ray_address: cannot reach the Ray cluster at 127.0.0.1:{port}" in proc.stderr
    assert time.monotonic() - start < 90  # both, imports and the tiny cohort included (Ray alone retries ~60 s)
