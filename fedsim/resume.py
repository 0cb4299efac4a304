"""Resuming a stopped run (`fedsim run --resume RUN_DIR`): which folder, which scenario, which round.

A run folder can be resumed when it holds its resolved scenario and a checkpoint, and the scenario
given now (or the folder's own) resolves to exactly the recorded one; anything else is refused with
one line before the folder is touched. The setting resumes from the checkpoint itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.run_folder import RunFolder
from fedsim.scenario import Scenario, ScenarioError, scenario_fingerprint, scenario_to_yaml


@dataclass(frozen=True)
class Resumable:
    run: RunFolder
    scenario: Scenario
    round: int  # the last round the checkpoint holds
    finished: bool  # the run ended (summary.json, not failed): nothing is left to do


def first_difference(recorded: Any, given: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first key path where two resolved scenarios differ, with both values; None if equal."""
    if isinstance(recorded, dict) and isinstance(given, dict):
        for key in list(recorded) + [k for k in given if k not in recorded]:
            found = first_difference(recorded.get(key), given.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(given, list) and len(recorded) == len(given):
        for i, (a, b) in enumerate(zip(recorded, given, strict=True)):
            found = first_difference(a, b, f"{path}.{i}")
            if found:
                return found
        return None
    return None if recorded == given else (path or "(scenario)", recorded, given)


def open_resumable(run_dir: Path, scenario_file: Path | None, overrides: list[str]) -> Resumable:
    """The run to resume and its scenario; ScenarioError (one line) when the folder cannot be resumed."""
    from fedsim.loading import load_scenario

    run = RunFolder(run_dir)
    if not run.is_started():
        raise ScenarioError(f"--resume: {run_dir} is not a run folder (no scenario.yaml)")
    try:
        meta = run.checkpoint_meta()
    except ValueError as exc:
        raise ScenarioError(f"--resume: {exc}") from None
    if meta is None:
        raise ScenarioError(f"--resume: {run_dir} has no checkpoint (it stopped before its first round ended, or "
                            "its setting does not checkpoint): run the scenario again")
    scenario = load_scenario(scenario_file or run.scenario_file, overrides)
    given = yaml.safe_load(scenario_to_yaml(scenario))
    try:
        recorded = run.scenario_raw()
    except yaml.YAMLError as exc:
        raise ScenarioError(f"--resume: {run.scenario_file} is damaged ({type(exc).__name__})") from None
    diff = first_difference(recorded, given)
    if diff is not None:
        key, was, now = diff
        raise ScenarioError(f"--resume: {run_dir} was made by a different scenario: {key} is {was!r} there, "
                            f"{now!r} here")
    if meta.get("scenario") != scenario_fingerprint(scenario):
        raise ScenarioError(f"--resume: {run.checkpoint_file} belongs to another scenario than {run.scenario_file}")
    return Resumable(run=run, scenario=scenario, round=int(meta["round"]), finished=run.is_finished())
