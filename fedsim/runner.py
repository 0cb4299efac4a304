"""Run one scenario end to end: experiment -> setting (trains, records observations) -> attack
families (on the run folder) -> summary and report. Rerun one attack on a finished run folder.

The runner knows settings and families only through their bases: it names neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.defense_copies import defense_copies
from fedsim.experiment import Experiment, prepare
from fedsim.families import AttackFamily, family_ref, resolve_family
from fedsim.html_report import provenance
from fedsim.plugins import family_groups, setting_of
from fedsim.report import final_dp_epsilon, run_families, write_outputs
from fedsim.run_folder import RunFolder, safe_name
from fedsim.scenario import PluginSpec, Scenario, ScenarioError
from fedsim.seeding import seed_everything
from fedsim.settings.base import FINAL_MODEL, SettingOutcome

Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    failures: list[dict[str, Any]]
    error: str | None = None


def run_scenario(scenario: Scenario, *, out_dir: Path | None = None, log: Log = print,
                 resume: RunFolder | None = None) -> RunResult:
    """Run the scenario's setting, then its attacks; the run folder is complete even if parties failed.

    `resume`: a stopped run's folder (see fedsim.resume): the setting goes on from its checkpoint and
    the attacks run again on everything it recorded."""
    t0 = time.perf_counter()
    seed_everything(scenario.seed)
    setting = setting_of(scenario)
    families = [(cls(scenario), specs) for cls, specs in family_groups(scenario)]
    experiment = prepare(scenario, withheld=setting.withheld(), defense_copies=defense_copies, log=log)
    setting.check(experiment)
    for family, specs in families:
        family.check(experiment, specs)

    run = resume if resume is not None else RunFolder.create(scenario, out_dir)
    _write_partitions(run, experiment, log)
    outcome = setting.run(experiment, run, log=log)
    needs_model = any(FINAL_MODEL in family.consumes for family, _ in families)
    if outcome.final_state is not None and (scenario.output.save_model or needs_model):
        run.save_model(outcome.final_state)
    if scenario.reference == "centralized" and outcome.error is None:
        outcome.summary["reference"] = _reference(run, experiment, outcome, log)
    results: dict[str, list[dict[str, Any]]] = {}
    if outcome.error is None:
        for family, specs in families:
            results[family.summary_key()] = _public(_run_family(family, specs, run, experiment, log))
    summary = _summary(scenario, experiment, outcome, run, [type(f) for f, _ in families], results,
                       wall_s=time.perf_counter() - t0)
    run.write_summary(summary)
    write_outputs(run)
    return RunResult(run_dir=run.path, summary=summary, failures=outcome.failures, error=outcome.error)


def rerun_attack(run_dir: Path, spec: PluginSpec, *, log: Log = print) -> list[dict[str, Any]]:
    """Run one attack again on a recorded run (no re-training); its rows replace the attack's old
    rows in summary.json, and the report is rewritten."""
    from fedsim.attacks import ATTACKS
    from fedsim.loading import load_scenario

    run = RunFolder(run_dir)
    if not run.is_run():
        raise ScenarioError(f"not a run folder (no scenario.yaml / summary.json): {run_dir}")
    scenario = load_scenario(run.scenario_file)
    try:
        plugin = ATTACKS.get(spec.name)
        plugin.parse(spec.params)
        family_cls = resolve_family(plugin.family)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ScenarioError(f"--attack {spec.name}: {exc}") from None
    rows = _public(_one_attack(run, scenario, spec, log=log, prepare_log=log, check=True))
    summary = run.summary()
    key = family_cls.summary_key()
    summary[key] = [r for r in summary.get(key, []) if r.get("attack") != spec.key] + rows
    if "families" not in summary:  # a run folder from before families were recorded: the ones with rows
        summary["families"] = [_family_entry(f) for f in run_families(summary) if summary.get(f.summary_key())]
    if all(f["name"] != family_cls.name for f in summary["families"]):
        summary["families"].append(_family_entry(family_cls))
    run.write_summary(summary)
    write_outputs(run)
    return rows


def _reference(run: RunFolder, experiment: Experiment, outcome: SettingOutcome, log: Log) -> dict[str, Any]:
    from fedsim.reference import reference_summary

    reference = reference_summary(run, experiment, log=log)
    key, task = experiment.task.primary_metric, experiment.task
    log(f"[reference] centralized: test {key.upper()} {reference['final'][key]:.2f} (this run's model "
        f"{outcome.final.get(key, float('nan')):.2f}, {task.baseline_name} "
        f"{task.baseline(task.target_mean, experiment.y_test)[key]:.2f})")
    return reference


def _run_family(family: AttackFamily, specs: list[PluginSpec], run: RunFolder, experiment: Experiment,
                log: Log) -> list[dict[str, Any]]:
    """The family's attacks on the run folder; one with `timeout_s` runs in a process of its own,
    stopped (and recorded as failed) when its time is up."""
    inline = [s for s in specs if not getattr(s, "timeout_s", None)]
    rows = family.run(run, experiment, inline, log=log) if inline else []
    for spec in specs:
        if spec not in inline:
            rows += _run_bounded(spec, experiment.scenario, run, log)
    order = {spec.key: i for i, spec in enumerate(specs)}  # rows in the order of `attacks:`
    return sorted(rows, key=lambda row: order.get(row.get("attack"), len(order)))


def _one_attack(run: RunFolder, scenario: Scenario, spec: PluginSpec, *, log: Log, prepare_log: Log,
                check: bool = False) -> list[dict[str, Any]]:
    """One attack's rows on a recorded run, in an experiment prepared afresh (a re-run, or a bounded
    attack's own process)."""
    from fedsim.attacks import ATTACKS

    family = resolve_family(ATTACKS.get(spec.name).family)(scenario)
    experiment = prepare(scenario, withheld=setting_of(scenario).withheld(), defense_copies=defense_copies,
                         log=prepare_log)
    if check:
        family.check(experiment, [spec])
    return family.run(run, experiment, [spec], log=log)


def _run_bounded(spec: PluginSpec, scenario: Scenario, run: RunFolder, log: Log) -> list[dict[str, Any]]:
    import json
    import multiprocessing

    from fedsim.families import attack_index

    out = run.path / f".attack-{safe_name(spec.key)}.json"
    out.unlink(missing_ok=True)
    process = multiprocessing.get_context("spawn").Process(target=_attack_process, args=(run.path, scenario, spec, out))
    process.start()
    process.join(spec.timeout_s)
    timed_out = process.is_alive()
    if timed_out:
        process.kill()
        process.join()
    if out.is_file():  # it finished (perhaps just as its time ran out)
        rows = json.loads(out.read_text())
        out.unlink()
        return rows
    error = (f"timed out after {spec.timeout_s:g}s (attacks.{attack_index(scenario, spec)}.timeout_s)" if timed_out
             else f"the attack's process ended with exit code {process.exitcode} before its result")
    log(f"[attack {spec.key}] failed: {error}")
    row = {"attack": spec.key, "status": "error", "error": error}
    run.write_results(spec.key, [row])
    return [row]


def _attack_process(run_dir: Path, scenario: Scenario, spec: PluginSpec, out: Path) -> None:
    """One attack in a process of its own (`timeout_s`): its rows go to `out`."""
    import json
    import os
    import sys

    from fedsim.run_folder import atomic_write_text, clean_json

    try:
        rows = _one_attack(RunFolder(run_dir), scenario, spec, log=print, prepare_log=lambda _: None)
    except Exception as exc:  # families record their attacks' errors; this is the family's own
        import traceback

        rows = [{"attack": spec.key, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc()}]
        RunFolder(run_dir).write_results(spec.key, rows)
    atomic_write_text(out, json.dumps(clean_json(rows), default=str))
    sys.stdout.flush()
    os._exit(0)


def _write_partitions(run: RunFolder, experiment: Experiment, log: Log) -> None:
    import numpy as np

    split, cohort = experiment.split, experiment.cohort
    run.write_partitions({
        "by": experiment.scenario.data.partition.by,
        "test": len(split.test),
        "clients": [
            {**size, "sites": sorted({cohort.site_names[cohort.site[i]] for i in c.train}),
             "mean_age": float(np.mean(cohort.age[c.train]))}
            for size, c in zip(split.sizes(), split.clients, strict=True)
        ],
    })
    log("partitions: " + ", ".join(f"client {s['client']}: {s['train']} train / {s['val']} val"
                                   for s in split.sizes()) + f"; server test: {len(split.test)}")


def _public(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Result rows as summary.json keeps them (tracebacks stay in each family's results.jsonl)."""
    return [{k: v for k, v in row.items() if k != "traceback"} for row in rows]


def _family_entry(family: type[AttackFamily]) -> dict[str, str]:
    return {"name": family.name, "plugin": family_ref(family), "key": family.summary_key()}


def _summary(scenario: Scenario, experiment: Experiment, outcome: SettingOutcome, run: RunFolder,
             families: list[type[AttackFamily]], results: dict[str, list[dict[str, Any]]], *,
             wall_s: float) -> dict[str, Any]:
    task = experiment.task
    status = "failed" if outcome.error else ("completed_with_client_failures" if outcome.failures else "completed")
    return {
        "scenario": scenario.name,
        "setting": scenario.setting,
        "status": status,
        "error": outcome.error,
        "rounds_completed": outcome.rounds_completed,
        "primary_metric": task.primary_metric,
        "final": outcome.final,
        "initial": outcome.initial,
        "baseline_predict_mean": task.baseline(task.target_mean, experiment.y_test),
        "baseline_name": task.baseline_name,
        "target_mean": task.target_mean,
        **outcome.summary,
        "wall_s": wall_s,
        "provenance": provenance(),
        "defenses": [spec.key for spec in scenario.defenses],
        "dp_epsilon": final_dp_epsilon(run.metrics()),
        "families": [_family_entry(f) for f in families],
        **{f.summary_key(): results.get(f.summary_key(), []) for f in families},
    }
