"""Submit a scenario to a Ray cluster as a Ray job (`fedsim submit`), or a sweep as one job a
point (`fedsim sweep --address`).

The job runs `python -m fedsim run` on the cluster: a Python entry point that runs Flower's
simulation in-process and joins the job's cluster (fedsim.engine), in a copy of the working
directory that Ray uploads (files ignored by .gitignore stay behind, and so does fedsim's own
source when the working directory is a fedsim checkout: Ray puts the copy first on the path, and
half a package from the upload over the one installed on the node would mix versions). The run
folder is written on the node that runs the job's driver, under `out_dir` (docs/cluster.md).
Needs Ray's job client, `pip install 'fedsim[cluster]'`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.scenario import ScenarioError

if TYPE_CHECKING:
    from fedsim.sweep import SweepPoint

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SOURCE_DIRS = ["/fedsim", "/clients", "/server", "/attacks", "/defenses"]  # a checkout's package folders
RUN_FOLDER_LINE = re.compile(r"^run folder: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: str  # one of TERMINAL, or PENDING / RUNNING when not waited for
    run_dir: str | None  # as printed by the job's `fedsim run`
    logs: str


def job_client(address: str):  # noqa: ANN201 - ray's JobSubmissionClient, imported only here
    """Ray's job client for a dashboard address (http://head:8265); bad input raises ScenarioError."""
    if not re.fullmatch(r"https?://[A-Za-z0-9_.-]+:\d{1,5}/?", address):
        raise ScenarioError(f"--address: {address!r} is not a Ray dashboard address (http://head:8265)")
    if importlib.util.find_spec("aiohttp") is None:  # ray[default]: the job client's HTTP layer
        raise ScenarioError("fedsim submit needs Ray's job client: pip install 'fedsim[cluster]'")
    from ray.job_submission import JobSubmissionClient

    from fedsim.ray_setup import check_reachable

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk"):  # the job client logs every file it packs
        logging.getLogger(name).setLevel(logging.ERROR)
    check_reachable(address.removeprefix("http://").removeprefix("https://").rstrip("/"))
    return JobSubmissionClient(address)


def entrypoint(scenario: Path, working_dir: Path, overrides: list[str], out_dir: Path) -> str:
    """The shell command the job runs: the scenario by its path inside the uploaded working directory."""
    try:
        relative = scenario.resolve().relative_to(working_dir.resolve())
    except ValueError as exc:
        raise ScenarioError(f"scenario {scenario} is outside the working directory {working_dir} that the job "
                            "uploads (give --working-dir)") from exc
    args = ["python", "-m", "fedsim", "run", relative.as_posix(), "--out", str(out_dir)]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args)


def submit(scenario: Path, *, address: str, working_dir: Path, overrides: list[str], out_dir: Path,
           wait: bool = True, timeout_s: float | None = None, log: Callable[[str], None] = print) -> JobOutcome:
    """Submit the scenario; with `wait`, relay the job's log lines until it ends."""
    client = job_client(address)
    job_id, command = _start(client, scenario, working_dir, overrides, out_dir)
    log(f"submitted Ray job {job_id}: {command}")
    if not wait:
        return JobOutcome(job_id, _status(client, job_id), None, "")
    try:
        return _follow(client, job_id, timeout_s, log)
    except KeyboardInterrupt:
        log(f"stopped following; the job goes on: `ray job stop {job_id}` stops it")
        raise


def _start(client, scenario: Path, working_dir: Path, overrides: list[str], out_dir: Path) -> tuple[str, str]:  # noqa: ANN001
    command = entrypoint(scenario, working_dir, overrides, out_dir)
    root = working_dir.resolve()
    excludes = [d for d in SOURCE_DIRS if (root / d.lstrip("/") / "__init__.py").is_file()]
    return client.submit_job(entrypoint=command, runtime_env={"working_dir": str(root), "excludes": excludes}), command


def _status(client, job_id: str) -> str:  # noqa: ANN001
    return str(client.get_job_status(job_id)).rsplit(".", 1)[-1]


def _run_dir(logs: str) -> str | None:
    found = RUN_FOLDER_LINE.findall(logs)
    return found[-1].strip() if found else None


def submit_sweep(points: list[SweepPoint], scenario: Path, *, address: str, working_dir: Path,
                 overrides: list[str], folder: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every sweep point as its own Ray job, all submitted at once (the cluster runs as many side by
    side as it has room for; the rest wait, see fedsim.engine.start_ray); returns the table's rows
    as they end, read from the run folders (which must be visible here: a shared folder, or loopback)."""
    from fedsim.run_folder import RunFolder
    from fedsim.sweep import failed_row, point_row, write_tables

    client = job_client(address)
    jobs = []
    for i, point in enumerate(points, 1):
        sets = [*overrides, *(f"{key}={json.dumps(value)}" for key, value in point.values.items())]
        jobs.append(_start(client, scenario, working_dir, sets, folder / "points")[0])
        log(f"[sweep {i}/{len(points)}] {point.label}: Ray job {jobs[-1]}")
    rows: list[dict[str, Any] | None] = [None] * len(points)
    while any(row is None for row in rows):
        for i, (point, job_id) in enumerate(zip(points, jobs, strict=True)):
            if rows[i] is not None or (status := _status(client, job_id)) not in TERMINAL:
                continue
            logs = client.get_job_logs(job_id)
            run_dir = _run_dir(logs)
            if run_dir and RunFolder(Path(run_dir)).is_run():
                rows[i] = point_row(point, RunFolder(Path(run_dir)).summary(), Path(run_dir))
            else:
                last = [ln for ln in logs.splitlines() if ln.strip()][-1:] or [f"job {status}"]
                rows[i] = {**failed_row(point, f"Ray job {job_id} {status}: {last[0]}"), "run": run_dir}
            log(f"[sweep {i + 1}/{len(points)}] {point.label}: {rows[i]['status']}")
            write_tables(folder, [r for r in rows if r is not None])
        time.sleep(1.0)
    return [r for r in rows if r is not None]


def _follow(client, job_id: str, timeout_s: float | None, log: Callable[[str], None]) -> JobOutcome:  # noqa: ANN001
    """Relay the job's log lines until it ends (or `timeout_s` passes: then stop it)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        status = _status(client, job_id)
        logs = client.get_job_logs(job_id)
        complete = len(logs) if status in TERMINAL else logs.rfind("\n") + 1  # whole lines only, until the end
        for line in logs[shown:complete].splitlines():
            log(f"  {line}")
        shown = max(shown, complete)
        if status in TERMINAL:
            break
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            status = "STOPPED"
            break
        time.sleep(1.0)
    return JobOutcome(job_id, status, _run_dir(logs), logs)
