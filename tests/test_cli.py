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
