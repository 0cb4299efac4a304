"""The run folder: everything a run produced, written as it happens and atomically.

runs/<scenario>/<timestamp>/ holds scenario.yaml (resolved), metrics.jsonl (one record per round
and client, appended and flushed as rounds finish), partitions.json, summary.json, model files
(model.safetensors: the final model), observations/ (what an adversary saw, one folder each),
private/ (the true inputs behind an observation, for scoring only: attackers never read it),
attacks/ (each attack's or family's results), figures/ and report.md. A crash loses at most the
round in flight. `RunFolder` is the one place that knows these paths.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fedsim.scenario import Scenario

VOLATILE_KEYS = frozenset({"seconds", "elapsed_s", "wall_s", "started_at", "worker_pid"})  # timings and process ids:
# they differ between two runs of one scenario
MODEL = "model"  # the final model of a run: model.safetensors
CHECKPOINT_META = "fedsim.checkpoint"  # header key of checkpoint.safetensors: round, RNG states, ... as JSON


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def clean_json(value: Any) -> Any:
    """Non-finite floats become null (strict JSON has no NaN or inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    return value


def safe_name(name: str) -> str:
    """A plug-in name or `path/file.py:Class` as a folder name (attacks/<name>/)."""
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in Path(name.split(":")[-1]).name)


def observation_name(server_round: int, client: int) -> str:
    return f"round{server_round:03d}_client{client:03d}"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None, *,
                 metadata: dict[str, str] | None = None) -> None:
    """safetensors (never pickle) written atomically (temporary file, fsync, rename), with optional
    text `metadata` in its header and an optional JSON sidecar `meta`."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if meta is not None:
        atomic_write_text(path.with_suffix(".json"), json.dumps(clean_json(meta), indent=2) + "\n")


class DamagedFileError(ValueError):
    """A tensor file fedsim cannot read as safetensors (a pickle, a wrong header, a torn copy)."""

    @classmethod
    def of(cls, path: Path, exc: Exception) -> DamagedFileError:
        return cls(f"{path}: not a readable safetensors file ({exc}); fedsim never loads pickles")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; DamagedFileError (one line naming the file) for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as exc:
        raise DamagedFileError.of(path, exc) from None


OWNER_STATE = "owner/state.safetensors"  # data_lake: what the owner's recipe prepared outside the lakes


@dataclass(frozen=True)
class RecordedObservation:
    """One thing an adversary observed, as recorded: its kind (`gradient`, `weights`, `aggregate`,
    ...), its metadata, and its tensors (read on demand)."""

    name: str  # e.g. round001_client000
    meta: dict[str, Any]
    folder: Path

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    def update(self) -> dict[str, torch.Tensor]:
        """What was observed: the reply, gradient or aggregate."""
        return load_tensors(self.folder / "update.safetensors")

    def global_state(self) -> dict[str, torch.Tensor]:
        """The model the observed party started from (what the server sent)."""
        return load_tensors(self.folder / "global.safetensors")

    def owner_state(self) -> dict[str, torch.Tensor]:
        """data_lake: what the model owner prepared outside the lakes and kept (empty if nothing)."""
        path = self.folder.parent.parent / OWNER_STATE
        return load_tensors(path) if path.is_file() else {}


class RunFolder:
    """Reader and writer of one run folder; appending metrics is safe from Flower's server thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._start = time.perf_counter()

    @classmethod
    def create(cls, scenario: Scenario, out_dir: Path | None = None) -> RunFolder:
        """A new timestamped folder under `<out>/<scenario name>/`, holding the resolved scenario."""
        from fedsim.scenario import scenario_to_yaml

        root = Path(out_dir or scenario.output.dir) / scenario.name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
            candidate = root / f"{stamp}{suffix}"
            try:
                candidate.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                continue
            run = cls(candidate)
            atomic_write_text(run.scenario_file, scenario_to_yaml(scenario))
            return run
        raise RuntimeError(f"cannot create a run folder under {root}")

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    # ---------------------------------------------------------------- files of the whole run

    @property
    def scenario_file(self) -> Path:
        return self.path / "scenario.yaml"

    @property
    def report_file(self) -> Path:
        return self.path / "report.md"

    @property
    def engine_log(self) -> Path:
        """flower.log: the simulation engine's own log (tracebacks included)."""
        return self.path / "flower.log"

    @property
    def checkpoint_file(self) -> Path:
        """checkpoint.safetensors: the federation's state after its last finished round (see server/checkpoint.py)."""
        return self.path / "checkpoint.safetensors"

    def checkpoint_meta(self) -> dict[str, Any] | None:
        """The checkpoint's header (its `round`, its `scenario` fingerprint, ...), read without torch;
        None if there is no checkpoint. Raises ValueError when the file is not a fedsim checkpoint."""
        path = self.checkpoint_file
        if not path.is_file():
            return None
        try:
            with open(path, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= 100_000_000:
                    raise ValueError("bad header size")
                header = json.loads(fh.read(size))
            meta = json.loads(header["__metadata__"][CHECKPOINT_META])
            int(meta["round"])
            return meta
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a fedsim checkpoint ({exc})") from None

    def rewind(self, to_round: int) -> None:
        """Forget everything recorded after round `to_round` (a run killed mid-round, resumed from its
        checkpoint): metrics.jsonl records of later rounds, and their observations and private batches."""
        kept = [r for r in self.metrics() if not isinstance(r.get("round"), int) or r["round"] <= to_round]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        for area in ("observations", "private"):
            for entry in sorted((self.path / area).glob("round*")):
                match = re.match(r"round(\d+)", entry.name)
                if match and int(match.group(1)) > to_round:
                    if entry.is_dir():
                        for f in entry.iterdir():
                            f.unlink()
                        entry.rmdir()
                    else:
                        entry.unlink()

    def is_started(self) -> bool:
        """Whether the folder is a run folder at all (it holds the resolved scenario)."""
        return self.scenario_file.is_file()

    def is_run(self) -> bool:
        """Whether the folder holds a finished run (a resolved scenario and a summary)."""
        return self.scenario_file.is_file() and (self.path / "summary.json").is_file()

    def is_finished(self) -> bool:
        """Whether the run ended and has nothing left to resume: a summary that is not `failed` (a
        summary cut short is a run that did not finish writing it)."""
        try:
            return self.is_run() and self.summary().get("status") != "failed"
        except ValueError:
            return False

    def scenario_raw(self) -> dict[str, Any]:
        """The resolved scenario as a plain mapping (the report reads it without validating)."""
        import yaml

        return yaml.safe_load(self.scenario_file.read_text()) or {}

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(clean_json(obj), indent=2) + "\n")

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else default

    def partitions(self) -> dict[str, Any]:
        """partitions.json: each client's sizes, sites and mean age, and the server's test-set size."""
        return self.read_json("partitions.json", {"clients": []})

    def write_partitions(self, partitions: dict[str, Any]) -> None:
        self.write_json("partitions.json", partitions)

    def summary(self) -> dict[str, Any]:
        return self.read_json("summary.json", {})

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json("summary.json", summary)

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.path / name, text)
        return self.path / name

    def figure(self, name: str) -> Path:
        """Where a run-level figure goes (figures/<name>)."""
        return self.path / "figures" / name

    # ---------------------------------------------------------------- metrics

    def append_metrics(self, **record: Any) -> None:
        """One line of metrics.jsonl, flushed to disk before returning."""
        line = json.dumps(clean_json(record), sort_keys=False)
        with self._lock, open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def metrics(self) -> list[dict[str, Any]]:
        """All records of metrics.jsonl (a torn last line from a crash is skipped)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    # ---------------------------------------------------------------- models

    def model_file(self, name: str = MODEL) -> Path:
        return self.path / f"{name}.safetensors"

    def save_model(self, state: dict[str, torch.Tensor], name: str = MODEL,
                   meta: dict[str, Any] | None = None) -> None:
        """A model as safetensors (loading it can never execute code), with optional JSON metadata."""
        save_tensors(self.model_file(name), state, meta)

    def load_model(self, name: str = MODEL, *, meta: dict[str, Any] | None = None) -> dict[str, torch.Tensor] | None:
        """A saved model; None when absent, or when `meta` is given and the saved metadata differ."""
        path = self.model_file(name)
        if not path.is_file():
            return None
        if meta is not None:
            sidecar = path.with_suffix(".json")
            if not sidecar.is_file() or json.loads(sidecar.read_text()) != meta:
                return None
        return load_tensors(path)

    # ---------------------------------------------------------------- observations and ground truth

    def write_owner_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """data_lake: what the owner prepared outside the lakes and kept (e.g. a codec it pre-trained)."""
        save_tensors(self.path / OWNER_STATE, tensors)

    def write_observation(self, name: str, *, update: dict[str, torch.Tensor], meta: dict[str, Any],
                          global_state: dict[str, torch.Tensor] | None = None) -> None:
        """Record what an adversary observed (meta must say its `kind`)."""
        folder = self.path / "observations" / name
        save_tensors(folder / "update.safetensors", update, meta)
        if global_state is not None:
            save_tensors(folder / "global.safetensors", global_state)

    def observations(self, kinds: Iterable[str] | None = None) -> list[RecordedObservation]:
        """Every recorded observation (of these kinds), in name order (round, then client)."""
        wanted = set(kinds) if kinds is not None else None
        out = []
        for folder in sorted((self.path / "observations").glob("*")):
            meta_file = folder / "update.json"
            if meta_file.is_file():
                obs = RecordedObservation(folder.name, json.loads(meta_file.read_text()), folder)
                if wanted is None or obs.kind in wanted:
                    out.append(obs)
        return out

    def observation(self, name: str) -> RecordedObservation | None:
        meta_file = self.path / "observations" / name / "update.json"
        if not meta_file.is_file():
            return None
        return RecordedObservation(name, json.loads(meta_file.read_text()), meta_file.parent)

    def write_truth(self, name: str, *, inputs: torch.Tensor, targets: torch.Tensor, rows: list[int]) -> None:
        """The true inputs behind observation `name`, in the private area, for scoring only."""
        save_tensors(self.path / "private" / f"{name}.safetensors", {"inputs": inputs, "targets": targets},
                     {"rows": rows})

    def read_truth(self, name: str) -> dict[str, Any]:
        """{'inputs', 'targets', 'rows'} of observation `name` (scorers only, never attackers)."""
        path = self.path / "private" / f"{name}.safetensors"
        truth: dict[str, Any] = dict(load_tensors(path))
        truth["rows"] = json.loads(path.with_suffix(".json").read_text())["rows"]
        return truth

    # ---------------------------------------------------------------- attack results

    def results_dir(self, key: str) -> Path:
        """attacks/<key>/: one attack's (or family's) reconstructions, figures and results."""
        return self.path / "attacks" / safe_name(key)

    def write_results(self, key: str, rows: list[dict[str, Any]]) -> None:
        """attacks/<key>/results.jsonl, one row per line."""
        atomic_write_text(self.results_dir(key) / "results.jsonl",
                          "".join(json.dumps(clean_json(r)) + "\n" for r in rows))
