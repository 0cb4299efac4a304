"""How well do fedsim's models learn? Prints one markdown table per scenario.

Each grid point runs through the real engine (`fedsim.sweep`) with `reference: centralized`, so
every row holds, on that run's own split: predicting the training mean, (brain age) a ridge
regression on the three tissue fractions of the ground-truth labels (an oracle of the classic age
markers), the centralized reference and the federated model, each on its test set and on its
training data (the gap is what membership attacks feed on), and the run's wall time.

    python benchmarks/utility.py                                      # the quickstart, plain and augmented
    python benchmarks/utility.py --scenarios scenarios/quickstart.yaml --grid federation.augment=false,true \\
        --set data.n_subjects=900
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedsim.experiment import prepare
from fedsim.loading import validate_scenario
from fedsim.reference import centralized_model
from fedsim.run_folder import RunFolder
from fedsim.sweep import expand, run_sweep
from fedsim.training import predict

REPO = Path(__file__).resolve().parents[1]


def tissue_ridge_mae(experiment: Any) -> float | None:
    """Test MAE of a ridge on the training rows' CSF / GM / WM fractions (brain age only)."""
    from sklearn.linear_model import RidgeCV

    from fedsim.data.synthetic import tissue_fractions

    cohort = experiment.cohort
    if experiment.scenario.task.name != "brain_age" or getattr(cohort, "labels", None) is None:
        return None
    train, test = experiment.train_rows, list(experiment.split.test)
    fractions = tissue_fractions(cohort.labels)
    fit = RidgeCV(alphas=np.logspace(-6, 2, 17)).fit(fractions[train], cohort.age[train])
    return float(np.abs(fit.predict(fractions[test]) - cohort.age[test]).mean())


def train_test(experiment: Any, model: Any, key: str) -> tuple[float, float]:
    """(train, test) metric of a model on the run's training rows and test set."""
    x, y = experiment.tensors(experiment.train_rows)
    train = experiment.task.metrics(predict(model, x), y)[key]
    return train, experiment.task.metrics(predict(model, experiment.x_test), experiment.y_test)[key]


def saved_models(run: RunFolder, experiment: Any) -> tuple[Any, Any]:
    """The run's centralized reference and its final federated model (None where not saved)."""
    final = run.load_model()
    federated = None
    if final is not None:
        federated = experiment.task.build_model()
        federated.load_state_dict(final)
        federated.eval()
    return centralized_model(run, experiment, log=print), federated


def rows_of(path: Path, grid: dict[str, list[Any]], overrides: list[str], out: Path) -> list[dict[str, Any]]:
    points = expand(path, grid=grid, overrides=[*overrides, "reference=centralized"])
    _, rows = run_sweep(points, out_dir=out, log=print)
    table = []
    for point, row in zip(points, rows, strict=True):
        run = RunFolder(Path(row["run"])) if row.get("run") else None
        summary = run.summary() if run else {}
        if row.get("status") == "failed":
            table.append({"point": point.label, "failed": row.get("error") or summary.get("error")})
            continue
        key = summary.get("primary_metric", "mae")
        experiment = prepare(validate_scenario(run.scenario_raw()), log=lambda _: None)
        central_model, federated_model = saved_models(run, experiment)
        central = train_test(experiment, central_model, key)
        federated = train_test(experiment, federated_model, key) if federated_model else (None, None)
        table.append({"point": point.label, "key": key, "train": len(experiment.train_rows),
                      "test": len(experiment.x_test), "mean": summary.get("baseline_predict_mean", {}).get(key),
                      "ridge": tissue_ridge_mae(experiment), "central": central, "federated": federated,
                      "wall_s": summary.get("wall_s")})
    return table


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_table(name: str, table: list[dict[str, Any]]) -> None:
    key = next((r["key"] for r in table if "key" in r), "metric")
    print(f"\n### {name}\n")
    print(f"| setting | train / test scans | predict the mean | ridge on tissue fractions | centralized test "
          f"{key} (train) | federated test {key} (train) | federated / centralized | run s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        if "failed" in r:
            print(f"| {r['point']} | failed: {r['failed']} |||||||")
            continue
        (c_train, c_test), (f_train, f_test) = r["central"], r["federated"]
        ratio = f"{f_test / c_test:.2f}x" if c_test and f_test is not None else "–"
        print(f"| {r['point']} | {r['train']} / {r['test']} | {_f(r['mean'])} | {_f(r['ridge'])} | "
              f"{_f(c_test)} ({_f(c_train)}) | {_f(f_test)} ({_f(f_train)}) | {ratio} | {_f(r['wall_s'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["scenarios/quickstart.yaml"])
    parser.add_argument("--grid", nargs="*", default=["federation.augment=false,true"],
                        help="key.path=v1,v2 (YAML values): one run per combination")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="key.path=value for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/utility"))
    args = parser.parse_args()
    grid = {}
    for item in args.grid:
        key, _, values = item.partition("=")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    for scenario in args.scenarios:
        path = Path(scenario) if Path(scenario).is_absolute() else REPO / scenario
        print_table(path.stem, rows_of(path, grid, args.overrides, args.out))


if __name__ == "__main__":
    main()
