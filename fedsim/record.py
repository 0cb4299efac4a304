"""The run folder: everything a run produced, written as it happens and atomically.

runs/<scenario>/<timestamp>/ holds scenario.yaml (resolved), metrics.jsonl (one record per round
and client, appended and flushed as rounds finish), partitions.json, summary.json,
model.safetensors, figures/ and report.md. A crash loses at most the round in flight.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedsim.scenario import Scenario, scenario_to_yaml

TIMING_KEYS = frozenset({"seconds", "elapsed_s", "wall_s"})


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunRecord:
    """Writer of one run folder; safe to call from Flower's server thread."""

    def __init__(self, run_dir: Path, scenario: Scenario) -> None:
        self.path = run_dir
        self.path.mkdir(parents=True, exist_ok=False)
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        atomic_write_text(self.path / "scenario.yaml", scenario_to_yaml(scenario))

    @classmethod
    def create(cls, scenario: Scenario, out_dir: Path | None = None) -> RunRecord:
        """A new timestamped folder under `<out>/<scenario name>/`."""
        root = Path(out_dir or scenario.output.dir) / scenario.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
            candidate = root / f"{stamp}{suffix}"
            if not candidate.exists():
                return cls(candidate, scenario)
        raise RuntimeError(f"cannot create a run folder under {root}")

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def append(self, **record: Any) -> None:
        """One line of metrics.jsonl, flushed to disk before returning."""
        line = json.dumps(_clean(record), sort_keys=False)
        with self._lock, open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(_clean(obj), indent=2) + "\n")

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        """The final global model as safetensors (loading it can never execute code)."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        tmp = self.path / ".model.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.path / "model.safetensors")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def safe_name(name: str) -> str:
    """A plug-in name or `path/file.py:Class` as a folder name (attacks/<name>/)."""
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in Path(name.split(":")[-1]).name)


def observation_name(server_round: int, client: int) -> str:
    return f"round{server_round:03d}_client{client:03d}"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """safetensors (never pickle) written atomically, with an optional JSON sidecar of metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    if meta is not None:
        atomic_write_text(path.with_suffix(".json"), json.dumps(_clean(meta), indent=2) + "\n")


def write_ground_truth(run_dir: Path, server_round: int, client: int, *, inputs: torch.Tensor,
                       targets: torch.Tensor, rows: list[int]) -> None:
    """The client's true batch, kept in the run folder's private area for scoring only.

    Attackers never read `private/`; the scorer does, to say how close a reconstruction came."""
    save_tensors(Path(run_dir) / "private" / f"{observation_name(server_round, client)}.safetensors",
                 {"inputs": inputs, "targets": targets}, {"rows": rows})
