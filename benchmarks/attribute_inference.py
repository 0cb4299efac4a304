"""Attribute inference against tabular models, with and without randomized response on the labels.

For each table — scikit-learn's real diabetes table (predict progression above the median; the
sensitive attribute is sex) and the synthetic clinical table joined to the brain cohort (predict the
diagnosis; sensitive: sex) — an MLP is trained centrally (one site holding every training record)
and federatedly (three sites, FedAvg), through the real engine (scenarios/attribute_inference_tabular.yaml),
without and with randomized response on the training labels (`label_noise`, flip probability p,
drawn once per client). Each attack's accuracy and AUC on the members sit beside the no-model
baseline (the same classifier on the known columns and label alone) and the utility (test
accuracy) of the model it attacked; medians over the seeds.

    python benchmarks/attribute_inference.py                 # ~25 min on 2 CPU cores (48 runs)
    python benchmarks/attribute_inference.py --tables diabetes --seeds 0 --ps 0 0.5
    python benchmarks/attribute_inference.py --csv runs/.../diabetes/.../sweep.csv runs/.../synthetic/.../sweep.csv
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from fedsim.sweep import expand, run_sweep

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "attribute_inference_tabular.yaml"
TABLES = {
    "diabetes": [],
    "synthetic": ["data.dataset=synthetic_brain", "data.n_subjects=400", "data.shape=16", "data.sites=3",
                  "data.neurodegeneration=true", "task.target=diagnosis"],
}
ATTACKS = ("fredrikson", "fredrikson_conditional", "attribute_classifier", "attribute_classifier_whitebox")


def defenses(p: float) -> list[dict[str, Any]]:
    return [{"name": "label_noise", "params": {"p": p, "fixed": True}}] if p > 0 else []


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def cells(table: str, rows: list[dict], clients_list: list[int], ps: list[float]) -> list[dict]:
    """Medians over seeds per (target, p) of one table's sweep rows (each with `clients` and `p`)."""
    out = []
    for clients in clients_list:
        for p in ps:
            cell = [r for r in rows if int(r["clients"]) == clients and abs(float(r["p"]) - p) < 1e-9]
            ok = [r for r in cell if str(r.get("status")).startswith("completed")]
            error = median(ok, "test_error_rate")
            line = {"table": table, "target": "central" if clients == 1 else f"federated ({clients} sites)",
                    "p": p, "utility": None if error is None else 1 - error, "runs": f"{len(ok)}/{len(cell)}",
                    "baseline": median(ok, f"{ATTACKS[0]}.baseline_accuracy")}
            for attack in ATTACKS:
                for key, suffix in ((attack, "accuracy"), (f"{attack}.auc", "auc"), (f"{attack}.leakage", "leakage")):
                    line[key] = median(ok, f"{attack}.{suffix}")
            out.append(line)
    return out


def from_csv(path: Path) -> list[dict]:
    """Rows of an earlier sweep's sweep.csv, numbers parsed, p read from the defenses column."""
    import csv
    import re

    rows = []
    for raw in csv.DictReader(path.open()):
        row: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                row[k] = float(v) if v not in ("", None) else None
            except ValueError:
                row[k] = v
        found = re.search(r"p=([0-9.]+)", str(raw.get("defenses", "")))
        rows.append({**row, "clients": row["federation.clients"], "p": float(found.group(1)) if found else 0.0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES))
    ap.add_argument("--ps", nargs="+", type=float, default=[0.0, 0.1, 0.25, 0.5])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 3], help="1 = central training")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_attribute_inference")
    ap.add_argument("--csv", nargs="+", type=Path, help="re-tabulate earlier runs: one sweep.csv per --tables entry")
    args = ap.parse_args()

    table_rows = []
    for i, table in enumerate(args.tables):
        if args.csv:
            rows = from_csv(args.csv[i])
        else:
            grid = {"federation.clients": args.clients, "defenses": [defenses(p) for p in args.ps],
                    "seed": args.seeds}
            points = expand(SCENARIO, grid=grid, overrides=TABLES[table])
            _, found = run_sweep(points, out_dir=args.out / table,
                                 log=lambda m: None if m.startswith("  ") else print(m))
            rows = [{**r, "clients": pt.values["federation.clients"],
                     "p": pt.values["defenses"][0]["params"]["p"] if pt.values["defenses"] else 0.0}
                    for r, pt in zip(found, points, strict=True)]
        table_rows += cells(table, rows, args.clients, args.ps)

    print(f"\nattribute inference of sex on the members; medians over seeds {args.seeds}; utility = test accuracy; "
          "accuracy (AUC) [leakage = accuracy - no-model baseline]\n")
    print("| table | target | RR p | utility | no-model baseline | " + " | ".join(ATTACKS) + " | runs |")
    print("|---|---|---|---|---|" + "---|" * len(ATTACKS) + "---|")
    for line in table_rows:
        attacks = " | ".join(f"{fmt(line[a])} ({fmt(line[f'{a}.auc'])}) [{fmt(line[f'{a}.leakage'], True)}]"
                             for a in ATTACKS)
        print(f"| {line['table']} | {line['target']} | {line['p']:g} | {fmt(line['utility'])} | "
              f"{fmt(line['baseline'])} | {attacks} | {line['runs']} |")


if __name__ == "__main__":
    main()
