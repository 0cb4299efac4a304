"""report.md, report.html and metrics.csv, written from the run folder alone (`fedsim report RUN` redoes them).

The report's own parts are the setup, the utility of the trained model, the partitions, the rounds,
the defenses and the failures; the setting adds its setup lines and every attack family its section.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fedsim.families import FAMILIES, AttackFamily, resolve_family
from fedsim.markdown import cell
from fedsim.plugins import load_builtins
from fedsim.protocol import PLACEMENT_KEYS
from fedsim.run_folder import RunFolder
from fedsim.settings.base import SETTINGS, Setting


def write_outputs(run: RunFolder) -> None:
    """metrics.csv, figures/curves.png, report.md and report.html from what the run folder holds."""
    from fedsim.figures import learning_curves
    from fedsim.html_report import write_page

    records, summary = run.metrics(), run.summary()
    run.write_text("metrics.csv", to_csv(records))
    figure = learning_curves(records, summary, run.figure("curves.png"))
    run.write_text(run.report_file.name, render_report(run, records, summary, figure))
    write_page(run.report_file, run.path / HTML_REPORT, title=run.scenario_raw()["name"], kind="run report",
               made_with=summary.get("provenance"))


HTML_REPORT = "report.html"
SECTION_FILES = ("metrics.jsonl", "partitions.json")  # a report is still written without them, marked


def check_run_folder(run: RunFolder) -> tuple[str | None, list[str]]:
    """(why no report can be written, or None; the files whose sections will be marked missing)."""
    import json

    import yaml

    content: Any = None
    for name, parse in (("scenario.yaml", yaml.safe_load), ("summary.json", json.loads)):
        path = run.path / name
        if not path.is_file():
            return f"not a run folder (no {name}): {run.path}", []
        try:
            content = parse(path.read_text())
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
            return f"{path}: not readable ({type(exc).__name__}: {str(exc).splitlines()[0]})", []
        if not isinstance(content, dict) or (name == "scenario.yaml" and not {"name", "data", "task"} <= set(content)):
            return f"{path}: not a fedsim {name} (run folders are written by fedsim run)", []
    return None, missing_sections(run, content)


def missing_sections(run: RunFolder, summary: dict[str, Any]) -> list[str]:
    """The files of SECTION_FILES the run should hold but does not (or cannot be read): their sections
    are marked instead of shown."""
    import json

    missing = []
    for name in SECTION_FILES:
        if name == "metrics.jsonl" and not (summary.get("setting", "federated") == "federated"
                                            and summary.get("rounds_completed")):
            continue  # only a federation that ran rounds writes one (not a data lake, a split-inference run)
        try:
            if name == "partitions.json":
                if not isinstance(json.loads((run.path / name).read_text()).get("clients"), list):
                    raise ValueError("no clients")
            else:
                (run.path / name).read_bytes()
        except (OSError, ValueError, AttributeError):
            missing.append(name)
    return missing


def to_csv(records: list[dict[str, Any]]) -> str:
    """CSV text with the union of the records' keys as columns, in first-seen order."""
    columns: list[str] = []
    for rec in records:
        columns += [k for k in rec if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def run_families(summary: dict[str, Any]) -> list[type[AttackFamily]]:
    """The families whose sections a run's report shows: those the run recorded, else (a run folder
    written before families were recorded) every registered one, in registration order."""
    load_builtins()
    refs = [f["plugin"] for f in summary.get("families", [])] or FAMILIES.registered()
    found = []
    for ref in refs:
        try:
            found.append(resolve_family(ref))
        except (ValueError, TypeError):  # a family from a file that has moved: its rows stay in summary.json
            continue
    return found


def run_setting(scenario: dict[str, Any]) -> type[Setting] | None:
    """The setting a run folder's scenario names (None if it cannot be found any more)."""
    load_builtins()
    try:
        return SETTINGS.get(scenario.get("setting", "federated"))
    except ValueError:
        return None


def render_report(run: RunFolder, records: list[dict[str, Any]], summary: dict[str, Any],
                  figure: Path | None) -> str:
    """A short Markdown report: setup, partitions, result vs baseline, per-round table, the families'
    sections, failures."""
    scenario = run.scenario_raw()
    missing = missing_sections(run, summary)
    partitions = {"clients": []} if "partitions.json" in missing else run.partitions()
    key = summary.get("primary_metric", "mae")
    data, model = scenario["data"], scenario["task"]["model"]
    setting = run_setting(scenario)
    initial_row, final_row = (setting or Setting).result_rows(summary)
    wall = f"{summary['wall_s']:.1f} s" if isinstance(summary.get("wall_s"), (int, float)) else "unknown"
    lines = [
        f"# {scenario['name']}",
        "",
        scenario.get("description", "").strip(),
        "",
        "## Setup",
        f"- Task: {scenario['task']['name']} with `{model['name']}` (channels {model['channels']}, "
        f"{model['norm']} norm)",
        f"- Data: `{data['dataset']}`, {data['n_subjects']} subjects at {data['shape']}^3, {data['sites']} sites, "
        f"split by {data['partition']['by']}",
        *(setting.report_setup(run, summary) if setting else []),
        f"- Seed {scenario.get('seed')}; status **{summary.get('status', 'unknown')}**; wall time {wall} "
        f"on {summary.get('device', 'cpu')}",
        "",
        "## Result",
        f"| | test {key.upper()} |",
        "|---|---|",
        f"| baseline: {summary.get('baseline_name', 'predict the mean')} | "
        f"{cell((summary.get('baseline_predict_mean') or {}).get(key))} |",
        f"| {initial_row} | {cell(summary.get('initial', {}).get(key))} |",
        f"| {final_row} | {cell(summary.get('final', {}).get(key))} |",
        *([f"| centralized reference (pooled training data, same budget) | "
           f"{cell(summary['reference'].get('final', {}).get(key))} |"] if summary.get("reference") else []),
        "",
    ]
    if figure is not None:
        lines += [f"![learning curves]({figure.relative_to(run.path)})", ""]
    lines += ["## Partitions"]
    if "partitions.json" in missing:
        lines.append("**Not shown: `partitions.json` is missing or unreadable.**")
    else:
        lines += ["| client | train | val | sites | mean age |", "|---|---|---|---|---|"]
        for c in partitions["clients"]:
            lines.append(f"| {c['client']} | {c['train']} | {c['val']} | {', '.join(c['sites'])} | "
                         f"{c['mean_age']:.1f} |")
        lines.append(f"\nServer test set: {partitions.get('test', '?')} subjects.")
    rounds = sorted({r["round"] for r in records if r.get("kind") == "server"})
    if "metrics.jsonl" in missing:
        lines += ["", "## Rounds", "**Not shown: `metrics.jsonl` is missing.**"]
    if rounds:
        lines += ["", "## Rounds", f"| round | test {key.upper()} | mean train loss | mean client val {key.upper()} |",
                  "|---|---|---|---|"]
    for rnd in rounds:
        srv = next(r for r in records if r.get("kind") == "server" and r["round"] == rnd)
        tr = [r["train_loss"] for r in records if r.get("kind") == "train" and r["round"] == rnd
              and r.get("train_loss") is not None]
        ev = [r[f"val_{key}"] for r in records if r.get("kind") == "evaluate" and r["round"] == rnd
              and r.get(f"val_{key}") is not None]
        lines.append(f"| {rnd} | {cell(srv.get(f'test_{key}'))} | {cell(sum(tr) / len(tr)) if tr else '–'} | "
                     f"{cell(sum(ev) / len(ev)) if ev else '–'} |")
    lines += _defense_section(scenario, records)
    if setting is not None:
        lines += setting.report_section(run, summary)
    for family in run_families(summary):
        lines += family.report_section(run, summary)
    errors = [r for r in records if r.get("kind") == "client_error"]
    if errors or summary.get("error"):
        lines += ["", "## Failures"]
        if summary.get("error"):
            lines.append(f"- run: {summary['error']}")
        lines += [f"- round {e['round']}, client {e['client']} ({e['phase']}): {e['error']}"
                  for e in errors]
    return "\n".join(lines) + "\n"


TRAIN_KEYS = {"round", "kind", "client", "num-examples", "train_loss", "local_steps", "batch_size",
              "gradient_update", "seconds", *PLACEMENT_KEYS}


def defense_metric_names(records: list[dict[str, Any]]) -> list[str]:
    """Numbers the defenses reported with the clients' updates (everything a train record has beyond training's own)."""
    names: list[str] = []
    for r in records:
        if r.get("kind") == "train":
            names += [k for k in r if k not in TRAIN_KEYS and k not in names]
    return names


def final_dp_epsilon(records: list[dict[str, Any]]) -> float | None:
    """The largest privacy budget any client had spent by its last round (DP-SGD's accountant), or None."""
    last: dict[int, float] = {}
    for r in sorted((r for r in records if r.get("kind") == "train" and r.get("dp_epsilon") is not None),
                    key=lambda r: r["round"]):
        last[r["client"]] = r["dp_epsilon"]
    return max(last.values()) if last else None


def _defense_section(scenario: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The defenses in the order applied, what they reported per round, and DP's budget per client."""
    specs = scenario.get("defenses") or []
    if not specs:
        return []
    where = ("Export gates, applied to every lake's export in this order:" if scenario.get("setting") == "data_lake"
             else "Applied by every client in this order:")
    lines = ["", "## Defenses", where]
    for i, spec in enumerate(specs, 1):
        params = ", ".join(f"{k} {v}" for k, v in (spec.get("params") or {}).items())
        lines.append(f"{i}. `{spec['name']}`" + (f" ({params})" if params else ""))
        if spec["name"] == "secure_aggregation":
            lines[-1] += (" — the server, and every attacker, sees only each round's aggregate (simulated in "
                          "fedsim's observation layer, not a cryptographic protocol)")
    train = [r for r in records if r.get("kind") == "train"]
    names = defense_metric_names(records)
    if names:
        lines += ["", "Mean over clients, per round:", "| round | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for rnd in sorted({r["round"] for r in train}):
            cells = []
            for name in names:
                vals = [r[name] for r in train if r["round"] == rnd and isinstance(r.get(name), (int, float))]
                cells.append(cell(sum(vals) / len(vals)) if vals else "–")
            lines.append(f"| {rnd} | " + " | ".join(cells) + " |")
    eps = final_dp_epsilon(records)
    if eps is not None:
        delta = next(r.get("dp_delta") for r in train if r.get("dp_epsilon") is not None)
        lines += ["", f"DP-SGD privacy budget spent (Opacus accountant): ε = {eps:.2f} at δ = {delta:g} for the "
                      "most exposed client after its last round. Per client:", "| client | " +
                  " | ".join(f"round {r}" for r in sorted({r['round'] for r in train})) + " |"]
        rounds = sorted({r["round"] for r in train})
        lines.append("|---" * (len(rounds) + 1) + "|")
        for client in sorted({r["client"] for r in train}):
            by_round = {r["round"]: r.get("dp_epsilon") for r in train if r["client"] == client}
            lines.append(f"| {client} | " + " | ".join(cell(by_round.get(rnd)) for rnd in rounds) + " |")
    return lines
