"""report.md and metrics.csv, written from the run folder alone (so `fedsim report RUN` can redo them)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from fedsim.figures import learning_curves
from fedsim.record import atomic_write_text, read_metrics, safe_name


def write_outputs(run_dir: Path) -> None:
    """metrics.csv, figures/curves.png and report.md from what the run folder holds."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    atomic_write_text(run_dir / "metrics.csv", to_csv(records))
    figure = learning_curves(records, summary, run_dir / "figures" / "curves.png")
    atomic_write_text(run_dir / "report.md", render_report(run_dir, records, summary, figure))


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


def _fmt(value: Any) -> str:
    if value is None:
        return "–"  # non-finite values are stored as null
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_report(run_dir: Path, records: list[dict[str, Any]], summary: dict[str, Any],
                  figure: Path | None) -> str:
    """A short Markdown report: setup, partitions, result vs baseline, per-round table, failures."""
    scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    parts_path = run_dir / "partitions.json"
    partitions = json.loads(parts_path.read_text()) if parts_path.exists() else {"clients": []}
    key = summary.get("primary_metric", "mae")
    fed, data, model = scenario["federation"], scenario["data"], scenario["task"]["model"]
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
        f"- Federation: {fed['clients']} clients, {fed['rounds']} rounds of `{fed['strategy']}`, "
        f"local {'steps ' + str(fed['local_steps']) if fed['local_steps'] else 'epochs ' + str(fed['local_epochs'])}, "
        f"batch {fed['batch_size']}, {fed['optimizer']} lr {fed['lr']}",
        f"- Seed {scenario['seed']}; status **{summary['status']}**; wall time {summary['wall_s']:.1f} s "
        f"on {summary.get('device', 'cpu')}",
        "",
        "## Result",
        f"| | test {key.upper()} |",
        "|---|---|",
        f"| baseline: {summary.get('baseline_name', 'predict the mean')} | "
        f"{_fmt(summary['baseline_predict_mean'].get(key))} |",
        f"| initial global model | {_fmt(summary.get('initial', {}).get(key))} |",
        f"| final global model (round {summary['rounds_completed']}) | {_fmt(summary.get('final', {}).get(key))} |",
        "",
    ]
    if figure is not None:
        lines += [f"![learning curves]({figure.relative_to(run_dir)})", ""]
    lines += ["## Partitions", "| client | train | val | sites | mean age |", "|---|---|---|---|---|"]
    for c in partitions["clients"]:
        lines.append(f"| {c['client']} | {c['train']} | {c['val']} | {', '.join(c['sites'])} | {c['mean_age']:.1f} |")
    lines += [f"\nServer test set: {partitions.get('test', '?')} subjects.", "", "## Rounds",
              f"| round | test {key.upper()} | mean train loss | mean client val {key.upper()} |", "|---|---|---|---|"]
    for rnd in sorted({r["round"] for r in records if r.get("kind") == "server"}):
        srv = next(r for r in records if r.get("kind") == "server" and r["round"] == rnd)
        tr = [r["train_loss"] for r in records if r.get("kind") == "train" and r["round"] == rnd
              and r.get("train_loss") is not None]
        ev = [r[f"val_{key}"] for r in records if r.get("kind") == "evaluate" and r["round"] == rnd
              and r.get(f"val_{key}") is not None]
        lines.append(f"| {rnd} | {_fmt(srv.get(f'test_{key}'))} | {_fmt(sum(tr) / len(tr)) if tr else '–'} | "
                     f"{_fmt(sum(ev) / len(ev)) if ev else '–'} |")
    lines += _defense_section(scenario, records)
    lines += _attack_section(run_dir, scenario, summary)
    lines += _membership_section(run_dir, summary)
    errors = [r for r in records if r.get("kind") == "client_error"]
    if errors or summary.get("error"):
        lines += ["", "## Failures"]
        if summary.get("error"):
            lines.append(f"- run: {summary['error']}")
        lines += [f"- round {e['round']}, client {e['client']} ({e['phase']}): {e['error']}"
                  for e in errors]
    return "\n".join(lines) + "\n"


TRAIN_KEYS = {"round", "kind", "client", "num-examples", "train_loss", "local_steps", "batch_size",
              "gradient_update", "seconds"}


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
    lines = ["", "## Defenses", "Applied by every client in this order:"]
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
                cells.append(_fmt(sum(vals) / len(vals)) if vals else "–")
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
            lines.append(f"| {client} | " + " | ".join(_fmt(by_round.get(rnd)) for rnd in rounds) + " |")
    return lines


def _target_column(row: dict[str, Any]) -> str:
    if "target_error" in row:
        return f"{row['target_error']:.1f}"
    if "label_accuracy" in row:
        return f"{row['label_accuracy']:.0%} of labels"
    return "–"


def _attack_section(run_dir: Path, scenario: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """What the server did beyond honest aggregation, and what each attack recovered."""
    rows = summary.get("attacks") or []
    behaviours = [b["name"] for b in scenario.get("server", {}).get("behaviours", [])]
    if not rows and not behaviours:
        return []
    targets = scenario.get("server", {}).get("targets", {})
    lines = ["", "## Server behaviour and attacks",
             f"- Server: {'malicious: ' + ', '.join(behaviours) if behaviours else 'honest-but-curious (only watches)'}"
             f"; observed clients {targets.get('clients') or 'all'} in rounds {targets.get('rounds') or 'all'}.",
             "- Scores compare each reconstruction with the true scan and with the population-mean image (the "
             "prior an attacker has without attacking); re-identification ranks the true scan among the "
             "client's data plus the server's population pool.", ""]
    lines += ["| attack | round | client | update | batch | PSNR dB | prior PSNR | gain | SSIM | prior SSIM "
              "| re-id top-1 (chance) | target error / label acc. | s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r.get('attack')} | {r.get('round', '–')} | {r.get('client', '–')} | "
                         f"{r.get('status')}: {r.get('error') or r.get('reason', '')} |||||||||")
            continue
        lines.append(
            f"| {r['attack']} | {r['round']} | {r['client']} | {r['kind']} | {r['batch_size']} | {r['psnr']:.1f} | "
            f"{r['prior_psnr']:.1f} | {r['psnr_gain']:+.1f} | {r['ssim']:.3f} | {r['prior_ssim']:.3f} | "
            f"{r['reid_top1']:.0%} ({r['chance_top1']:.1%}) | "
            f"{_target_column(r)} | {r['seconds']:.0f} |")
    for r in rows:
        if r.get("status") == "ok":
            name = f"round{r['round']:03d}_client{r['client']:03d}.png"
            figure = run_dir / "attacks" / safe_name(str(r["attack"])) / name
            if figure.exists():
                lines += ["", f"![{r['attack']} round {r['round']} client {r['client']}]"
                              f"({figure.relative_to(run_dir)})"]
    threats = sorted({f"{r['attack']}: {r['threat']}" for r in rows if r.get("threat")})
    if threats:
        lines += ["", "Threat models (what each attack was given): " + "; ".join(threats) + "."]
    return lines


def _membership_section(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """Membership inference per target model: ROC summary numbers beside the target's overfitting."""
    rows = summary.get("membership") or []
    if not rows:
        return []
    key = summary.get("primary_metric", "mae")
    lines = ["", "## Membership inference",
             "Balanced evaluation sets (members = scans the target trained on, non-members = scans it never "
             "saw); leaked samples given to the attacker are disjoint from both. The null AUC is the loss attack "
             "on a model that predicts the members' mean target: no membership information, so it shows how "
             "far the evaluation set's composition alone moves AUC from 0.5. Balanced accuracy is at the "
             "best threshold; the empirical epsilon is a 95%-confidence lower bound from the ROC"
             + (f" (the DP-SGD accountant's ε is {summary['dp_epsilon']:.2f}; a correct accountant's ε is never "
                "below it)" if summary.get("dp_epsilon") is not None else "") + ".", "",
             f"| target | attack | AUC | null AUC | balanced acc. | TPR@1%FPR | TPR@0.1%FPR | empirical ε ≥ "
             f"| train {key.upper()} | test {key.upper()} | members / non-members | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['target']} | {r['attack']} | {r.get('status')}: {r.get('error') or r.get('reason', '')} "
                         "|||||||||")
            continue
        lines.append(f"| {r['target']} | {r['attack']} | {r['auc']:.3f} | {_fmt(r.get('null_auc'))} | "
                     f"{r['balanced_accuracy']:.3f} | "
                     f"{r['tpr_at_1pct_fpr']:.3f} | {r['tpr_at_0_1pct_fpr']:.3f} | {r['empirical_epsilon']:.2f} | "
                     f"{_fmt(r.get(f'train_{key}'))} | {_fmt(r.get(f'test_{key}'))} | "
                     f"{r['members']} / {r['nonmembers']} | {r['seconds']:.0f} |")
    for roc in sorted((run_dir / "attacks" / "membership").glob("roc_*.png")):
        lines += ["", f"![{roc.stem}]({roc.relative_to(run_dir)})"]
    return lines
