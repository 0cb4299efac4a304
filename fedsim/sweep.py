"""`fedsim sweep`: run a grid of scenario variants and put utility beside attack success.

Every grid point is validated before the first one trains (bad input fails fast, exit 2); a point
whose run fails is recorded as failed and the sweep goes on. Output: `<out>/<name>-sweep/<time>/`
with each point's run folder under `points/`, `sweep.csv`, `sweep.md` and `privacy_utility.png`.
Given a Ray cluster (`--address`), every point runs as its own Ray job, side by side
(fedsim.cluster_jobs.submit_sweep); on one machine `--parallel N` runs N points at once, each in its
own process pinned to its share of the cores (its private Ray and torch see only those), so that
one point's serial phases (start-up, attacks in the driver) overlap another's training.
"""

from __future__ import annotations

import copy
import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.loading import apply_override, read_raw, set_path, validate_scenario
from fedsim.markdown import cell, table
from fedsim.run_folder import RunFolder, atomic_write_text
from fedsim.scenario import Scenario, ScenarioError, scenario_fingerprint, scenario_to_yaml


@dataclass(frozen=True)
class SweepPoint:
    values: dict[str, Any]  # grid key -> value
    scenario: Scenario

    @property
    def label(self) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.shown.items()) or "base"

    @property
    def shown(self) -> dict[str, Any]:
        """Grid values as table cells: a plug-in list reads `dp_sgd(noise_multiplier=1.0)`, not a dict dump."""
        return {k: show_value(v) for k, v in self.values.items()}


def show_value(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        parts = [v.get("label") or v["name"] + "(" + ", ".join(f"{k}={x}" for k, x in (v.get("params") or {}).items())
                 + ")" for v in value]
        return " + ".join(p.removesuffix("()") for p in parts) or "none"
    return value


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`--grid key=v1,v2,v3` options into a grid (values parsed as YAML); a value list that itself holds
    commas is written as a YAML list: `--grid 'defenses=[[], [{name: prune, params: {keep: 0.1}}]]'`."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values.strip():
            raise ScenarioError(f"--grid {item}: expected key.path=v1,v2,...")
        try:
            parsed = yaml.safe_load(values) if values.strip().startswith("[") else [
                yaml.safe_load(v) for v in values.split(",")]
        except yaml.YAMLError:
            raise ScenarioError(f"--grid {item}: values are not valid YAML") from None
        if not isinstance(parsed, list) or not parsed:
            raise ScenarioError(f"--grid {item}: expected a list of values")
        grid[key.strip()] = parsed
    return grid


def expand(path: Path, *, grid: dict[str, list[Any]], overrides: list[str]) -> list[SweepPoint]:
    """Every point of the scenario's `sweep.grid` plus `grid` (cartesian product), validated."""
    raw = read_raw(path)
    for item in overrides:
        apply_override(raw, item)
    full = {**validate_scenario(raw).sweep.grid, **grid}
    if not full:
        raise ScenarioError(f"{path}: nothing to sweep (add a sweep.grid section or --grid key=v1,v2)")
    points = []
    for combo in itertools.product(*full.values()):
        values = dict(zip(full, combo, strict=True))
        variant = copy.deepcopy(raw)
        variant.pop("sweep", None)
        try:
            for key, value in values.items():
                set_path(variant, key, value)
            points.append(SweepPoint(values, validate_scenario(variant)))
        except ScenarioError as exc:
            raise ScenarioError(f"sweep point {values}: {exc}") from None
    return points


def point_row(point: SweepPoint, summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One table row: the grid values, utility, cost, privacy budget and each family's columns."""
    from fedsim.report import run_families

    key = summary.get("primary_metric", "mae")
    records = RunFolder(run_dir).metrics()
    client_s = [r["seconds"] for r in records if r.get("kind") == "train" and r.get("seconds") is not None]
    row: dict[str, Any] = {**point.shown, "status": summary.get("status"),
                           f"test_{key}": summary.get("final", {}).get(key),
                           f"baseline_{key}": summary.get("baseline_predict_mean", {}).get(key),
                           "client_s_per_round": sum(client_s) / len(client_s) if client_s else None,
                           "dp_epsilon": summary.get("dp_epsilon"), "run": str(run_dir)}
    if summary.get("reference"):
        row[f"reference_{key}"] = summary["reference"].get("final", {}).get(key)
    for family in run_families(summary):
        row.update(family.sweep_columns(summary))
    return row


def recorded_run(point: SweepPoint, points_dir: Path) -> RunFolder | None:
    """The run folder a stopped sweep left for this point (its recorded scenario is the point's): the
    finished one if any, else the one with a checkpoint; None if the point has to start afresh."""
    wanted = yaml.safe_load(scenario_to_yaml(point.scenario))
    best: tuple[int, RunFolder] | None = None
    for folder in sorted(points_dir.glob("*/*")):
        run = RunFolder(folder)
        try:
            if not run.is_started() or run.scenario_raw() != wanted:
                continue
            meta = run.checkpoint_meta()
            if run.is_finished():
                rank = 2
            else:  # a checkpoint of exactly this point (its header names the scenario it belongs to)
                rank = int(meta is not None and meta.get("scenario") == scenario_fingerprint(point.scenario))
        except (ValueError, OSError, yaml.YAMLError):  # a damaged folder: not this point's
            continue
        if rank and (best is None or rank > best[0]):
            best = (rank, run)
    return best[1] if best else None


def run_point(point: SweepPoint, points_dir: Path, *, resume: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """One point's row: run it (with `resume`, go on from what a stopped sweep left of it)."""
    from fedsim.runner import run_scenario  # the engine is imported only when something runs

    try:
        prior = recorded_run(point, points_dir) if resume else None
        if prior is not None and prior.is_finished():
            log(f"already finished: {prior.path}")
            return point_row(point, prior.summary(), prior.path)
        result = run_scenario(point.scenario, out_dir=points_dir, log=log, resume=prior)
        return point_row(point, result.summary, result.run_dir)
    except Exception as exc:  # one failed point must not lose the others
        log(f"failed: {type(exc).__name__}: {exc}")
        return failed_row(point, f"{type(exc).__name__}: {exc}")


def run_sweep(points: list[SweepPoint], *, out_dir: Path | None = None, attack_metric: str | None = None,
              parallel: int = 1, log: Callable[[str], None] = print,
              resume: Path | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run every point (in turn, or `parallel` at once); returns the sweep folder and the table's rows.

    `resume`: the folder of a stopped sweep: finished points are kept, stopped ones go on from their
    checkpoint, the rest run."""
    folder = resume if resume is not None else sweep_folder(points, out_dir)
    if parallel > 1 and len(points) > 1:
        rows = _side_by_side(points, folder, parallel, log, resume=resume is not None)
        finish(folder, rows, points, attack_metric)
        return folder, rows
    rows = []
    for i, point in enumerate(points, 1):
        log(f"[sweep {i}/{len(points)}] {point.label}")
        rows.append(run_point(point, folder / "points", resume=resume is not None, log=lambda m: log(f"  {m}")))
        write_tables(folder, rows)
    finish(folder, rows, points, attack_metric)
    return folder, rows


def failed_row(point: SweepPoint, error: str) -> dict[str, Any]:
    """The table's row of a point that did not finish (the sweep goes on without it)."""
    return {**point.shown, "status": "failed", "error": error}


def core_shares(parallel: int) -> list[list[int]]:
    """This process's cores dealt out to `parallel` points (fewer when there are fewer cores)."""
    from fedsim.ray_setup import local_cpus

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(local_cpus()))
    n = max(1, min(parallel, len(cores)))
    return [cores[i::n] for i in range(n)]


def _point_process(point: SweepPoint, points_dir: Path, share: list[int], row_file: Path, resume: bool) -> None:
    """One point in its own process, pinned to `share`: its row goes to `row_file`, then the process
    ends at once (Flower's server thread, left running by a failed simulation, is not a daemon)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, share)
    row = run_point(point, points_dir, resume=resume, log=lambda m: print(f"  [{point.label}] {m}", flush=True))
    atomic_write_text(row_file, json.dumps(row, default=str))
    sys.stdout.flush()
    os._exit(0)


def _side_by_side(points: list[SweepPoint], folder: Path, parallel: int, log: Callable[[str], None], *,
                  resume: bool) -> list[dict[str, Any]]:
    """The points `parallel` at a time, each in a fresh pinned process; the table is rewritten as
    each one ends. A point whose process dies (killed for memory, say) is recorded as failed."""
    shares = core_shares(min(parallel, len(points)))
    context = multiprocessing.get_context("spawn")  # no forked copy of a driver that may hold threads
    log(f"[sweep] {len(points)} points, {len(shares)} at once on cores "
        + " / ".join(",".join(map(str, share)) for share in shares))
    (folder / "points").mkdir(parents=True, exist_ok=True)
    pending, free = list(range(len(points))), list(shares)
    running: dict[int, tuple[Any, int, list[int]]] = {}  # process sentinel -> (process, point, share)
    done: dict[int, dict[str, Any]] = {}
    while pending or running:
        while pending and free:
            i, share = pending.pop(0), free.pop(0)
            proc = context.Process(target=_point_process, args=(points[i], folder / "points", share,
                                                                 folder / f".point{i:04d}.json", resume))
            proc.start()
            running[proc.sentinel] = (proc, i, share)
        for sentinel in multiprocessing.connection.wait(list(running)):
            proc, i, share = running.pop(sentinel)
            proc.join()
            free.append(share)
            row_file = folder / f".point{i:04d}.json"
            try:
                done[i] = json.loads(row_file.read_text())
                row_file.unlink()
            except (OSError, ValueError):
                done[i] = failed_row(points[i], f"the point's process ended with exit code {proc.exitcode} "
                                                "before its result")
            log(f"[sweep {len(done)}/{len(points)}] {points[i].label}: {done[i].get('status')}")
            write_tables(folder, [done[k] for k in sorted(done)])
    return [done[i] for i in range(len(points))]


def sweep_folder(points: list[SweepPoint], out_dir: Path | None) -> Path:
    base = points[0].scenario
    return Path(out_dir or base.output.dir) / f"{base.name}-sweep" / time.strftime("%Y%m%d-%H%M%S")


def finish(folder: Path, rows: list[dict[str, Any]], points: list[SweepPoint], attack_metric: str | None) -> None:
    """The tables and the privacy-utility figure of a finished sweep."""
    from fedsim.html_report import write_page
    from fedsim.sweep_figure import privacy_utility_figure

    metric = attack_metric or points[0].scenario.sweep.attack_metric
    figure = privacy_utility_figure(rows, list(points[0].values), folder / "privacy_utility.png", attack_metric=metric)
    title = f"{points[0].scenario.name} sweep"
    write_tables(folder, rows, figure=figure is not None, title=title)
    write_page(folder / "sweep.md", folder / "sweep.html", title=title, kind="sweep", made_with=_made_with(rows))


def _made_with(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The provenance the first point that ran recorded (every point ran with the same software)."""
    for row in rows:
        try:
            return json.loads((Path(row["run"]) / "summary.json").read_text())["provenance"]
        except (KeyError, OSError, ValueError, TypeError):
            continue
    return None


METRIC_NAMES = {"mae": "MAE", "error_rate": "error rate", "balanced_accuracy": "balanced acc.", "dice": "Dice",
                "auc": "AUC", "tpr_at_1pct_fpr": "TPR@1%FPR", "empirical_epsilon": "empirical ε", "psnr": "PSNR",
                "psnr_gain": "gain (dB)", "ssim": "SSIM", "reid_top1": "re-id top-1", "accuracy": "accuracy",
                "leakage": "leakage", "baseline_accuracy": "baseline accuracy"}
CORE_HEADINGS = {"client_s_per_round": "client s / round", "dp_epsilon": "DP ε"}
_PREFIXES = (("test_", "test "), ("train_", "train "), ("baseline_", "baseline "), ("reference_", "centralized "))


def column_heading(column: str) -> str:
    """A table column as a reader names it: `test_mae` -> `test MAE`, `mia_loss_threshold@global_model.auc`
    -> `mia_loss_threshold @ global_model: AUC`. Grid keys and unknown columns stay as they are."""
    if column in CORE_HEADINGS:
        return CORE_HEADINGS[column]
    owner, _, metric = column.rpartition(".")
    for prefix, shown in ((p, s) for p, s in _PREFIXES if metric.startswith(p)):
        if metric.removeprefix(prefix) in METRIC_NAMES:
            metric_name = shown + METRIC_NAMES[metric.removeprefix(prefix)]
            break
    else:
        if metric not in METRIC_NAMES:
            return column
        metric_name = METRIC_NAMES[metric]
    return f"{owner.replace('@', ' @ ')}: {metric_name}" if owner else metric_name


def write_tables(folder: Path, rows: list[dict[str, Any]], *, figure: bool = False, title: str | None = None) -> None:
    """sweep.csv (every column, as named in the rows) and sweep.md (the same without the run folders,
    headed as a reader names them; once the sweep has finished, with its title and the plot)."""
    from fedsim.report import to_csv

    atomic_write_text(folder / "sweep.csv", to_csv(rows))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    shown = [c for c in columns if c not in ("run",)]
    lines = [f"# {title}", "", "## Points", ""] if title else []
    lines += table([column_heading(c) for c in shown], [[cell(row.get(c)) for c in shown] for row in rows])
    if figure:
        lines += ["", "## Privacy and utility", "", "![privacy-utility](privacy_utility.png)"]
    atomic_write_text(folder / "sweep.md", "\n".join(lines) + "\n")
