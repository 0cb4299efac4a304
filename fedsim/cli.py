"""`fedsim` command line: run, submit, sweep, validate, list, attack, report.

Bad input prints one line naming the key or file and exits 2 (no traceback); a failed run exits 1
after its run folder is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated scenario")
    run.add_argument("scenario", type=Path, nargs="?", help="the scenario (with --resume: optional, checked against "
                     "the run's)")
    run.add_argument("--out", type=Path, default=None, help="root folder for runs (default: output.dir)")
    run.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                     help="go on with a stopped run from its last checkpointed round")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario value, e.g. federation.rounds=5 (repeatable)")
    job = sub.add_parser("submit", help="run a scenario as a Ray job on a cluster (needs fedsim[cluster])")
    job.add_argument("scenario", type=Path)
    job.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://head:8265")
    job.add_argument("--working-dir", type=Path, default=Path("."),
                     help="uploaded to the cluster; must hold the scenario (default: .)")
    job.add_argument("--out", type=Path, required=True,
                     help="root folder for runs, an absolute path on the node that runs the job (the head, by default)")
    job.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a scenario value, e.g. federation.rounds=5 (repeatable)")
    job.add_argument("--no-wait", action="store_true", help="print the job id and return")
    job.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    swp = sub.add_parser("sweep", help="run a grid of scenario variants; write a table and a privacy-utility plot")
    swp.add_argument("scenario", type=Path)
    swp.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="values of one key, e.g. defenses.0.params.noise_multiplier=0.5,1,2 (repeatable; "
                          "added to the scenario's sweep.grid)")
    swp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    swp.add_argument("--out", type=Path, default=None, help="root folder (default: output.dir)")
    swp.add_argument("--attack-metric", default=None, help="column on the plot's privacy axis")
    swp.add_argument("--address", default=None, help="a Ray cluster's dashboard (http://head:8265): each point runs "
                     "as its own Ray job, side by side (needs fedsim[cluster]; --out absolute and visible here)")
    swp.add_argument("--working-dir", type=Path, default=Path("."), help="with --address: uploaded for each job")
    swp.add_argument("--resume", type=Path, default=None, metavar="SWEEP_DIR",
                     help="go on with a stopped sweep: keep its finished points, resume its stopped ones")
    swp.add_argument("--parallel", type=int, default=1, metavar="N", help="run N points at once on this machine, "
                     "each in its own process on its share of the cores (default 1)")
    val = sub.add_parser("validate", help="check scenario files without running them")
    val.add_argument("scenarios", type=Path, nargs="+")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    lst = sub.add_parser("list", help="list registered plug-ins")
    lst.add_argument("kind", nargs="?", help="only this kind (attack, defense, dataset, ...)")
    att = sub.add_parser("attack", help="re-run an attacker on a recorded federation (no re-training)")
    att.add_argument("run_dir", type=Path)
    att.add_argument("--attack", required=True, help="attack name or path/to/file.py:Class")
    att.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE",
                     help="attack parameter, e.g. iterations=2000 (repeatable)")
    rep = sub.add_parser("report", help="rewrite report.md, metrics.csv and figures of a run folder")
    rep.add_argument("run_dir", type=Path)
    return p


def _fail(message: str, code: int) -> int:
    print(f"fedsim: error: {message}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from fedsim.loading import load_scenario
    from fedsim.run_folder import RunFolder
    from fedsim.runner import run_scenario
    from fedsim.scenario import ScenarioError

    if args.resume is not None:
        from fedsim.resume import open_resumable

        if args.out is not None:
            raise ScenarioError("--out: a resumed run stays in its own folder (--resume)")
        resumable = open_resumable(args.resume, args.scenario, args.overrides)
        if resumable.finished:
            print(f"{args.resume}: the run is complete (round {resumable.round}); nothing to resume")
            return 0
        scenario, resume = resumable.scenario, resumable.run
    elif args.scenario is None:
        raise ScenarioError("run: give a scenario file (or --resume RUN_DIR)")
    else:
        scenario, resume = load_scenario(args.scenario, args.overrides), None
    result = run_scenario(scenario, out_dir=args.out, resume=resume)
    report = RunFolder(result.run_dir).report_file
    print(f"run folder: {result.run_dir}")
    if result.error:
        return _fail(f"run failed: {result.error} (results so far are in {result.run_dir})", 1)
    refused = [f for f in result.failures if f["error"].startswith("TamperedModelError")]
    if refused:  # the model-vetting defense doing its job, not a failure of the run
        print(f"{len(refused)} client update(s) refused a tampered model (model_vetting); see "
              f"{report}")
    failures = [f for f in result.failures if f not in refused]
    if failures:
        first = failures[0]
        return _fail(f"{len(failures)} client update(s) failed; first: round {first['round']} "
                     f"client {first['client']}: {first['error']} (see {report})", 1)
    return 0


def _on_cluster(args: argparse.Namespace, call):  # noqa: ANN001, ANN202
    """Run `call` against the cluster at --address: bad input stays ScenarioError (exit 2); an
    unreachable cluster or a failing job server becomes one line (exit 1) instead of Ray's traceback."""
    from fedsim.engine import EngineError
    from fedsim.scenario import ScenarioError

    if args.out is None or not args.out.is_absolute():
        raise ScenarioError(f"--out: {args.out} must be an absolute path: the jobs write it on the cluster's node")
    try:
        return call(), None
    except EngineError as exc:  # the cluster cannot be reached
        return None, _fail(str(exc).replace("resources.ray_address", "--address"), 1)
    except (ScenarioError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the job server refused or failed
        return None, _fail(f"--address {args.address}: the Ray job server failed: {type(exc).__name__}: {exc}", 1)


def cmd_submit(args: argparse.Namespace) -> int:
    from fedsim.cluster_jobs import submit
    from fedsim.loading import load_scenario

    load_scenario(args.scenario, args.overrides)  # bad input fails here, before anything is sent
    outcome, code = _on_cluster(args, lambda: submit(
        args.scenario, address=args.address, working_dir=args.working_dir, overrides=args.overrides,
        out_dir=args.out, wait=not args.no_wait, timeout_s=args.timeout))
    if outcome is None:
        return code
    if args.no_wait:
        print(f"job {outcome.job_id}: {outcome.status} (follow it with `ray job logs --follow {outcome.job_id}`)")
        return 0
    if outcome.run_dir:
        print(f"run folder: {outcome.run_dir}")
    if outcome.status != "SUCCEEDED":
        return _fail(f"Ray job {outcome.job_id} {outcome.status} (`ray job logs {outcome.job_id}` has its output)", 1)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fedsim.scenario import ScenarioError
    from fedsim.sweep import expand, parse_grid, run_sweep

    if not args.scenario.is_file():
        raise ScenarioError(f"scenario file not found: {args.scenario}")
    if args.parallel < 1:
        raise ScenarioError(f"--parallel: {args.parallel} is not a number of points at once (1 or more)")
    if args.address and args.parallel > 1:
        raise ScenarioError("--parallel is for a sweep on this machine; with --address every point is its own job")
    if args.resume is not None and (args.address or args.out):
        raise ScenarioError("--resume: a resumed sweep runs on this machine, in its own folder (no --address / --out)")
    if args.resume is not None and not (args.resume / "points").is_dir():
        raise ScenarioError(f"--resume: {args.resume} is not a sweep folder (no points/)")
    points = expand(args.scenario, grid=parse_grid(args.grid), overrides=args.overrides)
    print(f"sweep: {len(points)} points")
    if args.address:
        from fedsim.cluster_jobs import submit_sweep
        from fedsim.sweep import finish, sweep_folder

        folder = sweep_folder(points, args.out) if args.out else None
        rows, code = _on_cluster(args, lambda: submit_sweep(  # --out must also be readable here
            points, args.scenario, address=args.address, working_dir=args.working_dir, overrides=args.overrides,
            folder=folder))
        if rows is None:
            return code
        finish(folder, rows, points, args.attack_metric)
    else:
        folder, rows = run_sweep(points, out_dir=args.out, attack_metric=args.attack_metric, parallel=args.parallel,
                                 resume=args.resume)
    print((folder / "sweep.md").read_text())
    print(f"sweep folder: {folder}")
    failed = sum(r.get("status") == "failed" for r in rows)
    return _fail(f"{failed} sweep point(s) failed (see {folder / 'sweep.csv'})", 1) if failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fedsim.loading import load_scenario
    from fedsim.plugins import setting_of

    for path in args.scenarios:
        sc = load_scenario(path, args.overrides)
        print(f"{path}: ok ({sc.name}: {setting_of(sc).outline(sc)})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from fedsim.plugins import load_builtins

    registries = load_builtins()
    if args.kind and args.kind not in registries:
        return _fail(f"unknown plug-in kind '{args.kind}' (valid: {', '.join(registries)})", EXIT_BAD_INPUT)
    for kind, reg in registries.items():
        if args.kind and kind != args.kind:
            continue
        print(f"{kind}:")
        for name in reg.names() or ["(none yet)"]:
            desc = reg.describe(name) if name != "(none yet)" else ""
            print(f"  {name:<26} {desc}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from fedsim.loading import apply_override
    from fedsim.run_folder import RunFolder
    from fedsim.runner import rerun_attack
    from fedsim.scenario import PluginSpec

    params: dict = {}
    for item in args.overrides:
        apply_override(params, item)
    rows = rerun_attack(args.run_dir, PluginSpec(name=args.attack, params=params))
    print(f"wrote the attack's results and {RunFolder(args.run_dir).report_file}")
    failed = [r for r in rows if r.get("status") == "error"]
    return _fail(f"attack failed: {failed[0]['error']}", 1) if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedsim.report import check_run_folder, write_outputs
    from fedsim.run_folder import RunFolder

    run = RunFolder(args.run_dir)
    unusable, missing = check_run_folder(run)
    if unusable:
        return _fail(unusable, EXIT_BAD_INPUT)
    try:
        write_outputs(run)
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:  # a file fedsim did not write as it is
        return _fail(f"{run.path}: cannot write its report, a file of the folder is damaged "
                     f"({type(exc).__name__}: {exc})", EXIT_BAD_INPUT)
    print(f"wrote {run.report_file} and {run.path / 'report.html'}")
    if missing:  # the report is written, its sections without data marked
        return _fail(f"{run.path / missing[0]} is missing or unreadable: the report marks what it could not show"
                     + (f" (also {', '.join(missing[1:])})" if missing[1:] else ""), EXIT_BAD_INPUT)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `fedsim` console script."""
    from fedsim.registry import PluginError
    from fedsim.run_folder import DamagedFileError
    from fedsim.scenario import ScenarioError

    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "submit": cmd_submit, "sweep": cmd_sweep, "validate": cmd_validate, "list": cmd_list,
               "attack": cmd_attack,
               "report": cmd_report}[args.command]
    try:
        code = handler(args)
    except (ScenarioError, PluginError, DamagedFileError) as exc:
        code = _fail(str(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    sys.stdout.flush()
    sys.stderr.flush()
    if code != 0 and args.command in ("run", "sweep"):
        os._exit(code)  # Flower's server thread is not a daemon: never hang after a failed simulation
    sys.exit(code)


if __name__ == "__main__":
    main()
