"""`fedsim sweep`: a grid of variants, validated up front, run through the real engine, tabled and plotted."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.scenario import ScenarioError
from fedsim.sweep import expand, parse_grid, run_sweep
from tests.conftest import REPO, tiny_scenario


def _write(tmp_path, **sections):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_scenario(**sections)))
    return path


def test_grid_expands_to_the_cartesian_product_with_list_indices(tmp_path):
    path = _write(tmp_path, defenses=[{"name": "secure_aggregation"}],
                  sweep={"grid": {"federation.lr": [0.001, 0.01]}})
    points = expand(path, grid=parse_grid(["defenses.0.name=secure_aggregation"]), overrides=[])
    assert [p.values["federation.lr"] for p in points] == [0.001, 0.01]
    assert all(p.scenario.defenses[0].name == "secure_aggregation" for p in points)


def test_a_bad_point_fails_before_anything_runs(tmp_path):
    path = _write(tmp_path)
    with pytest.raises(ScenarioError, match=r"sweep point \{'federation.rounds': 0\}: federation.rounds"):
        expand(path, grid=parse_grid(["federation.rounds=1,0"]), overrides=[])
    with pytest.raises(ScenarioError, match="defenses.3"):
        expand(path, grid=parse_grid(["defenses.3.name=x"]), overrides=[])
    with pytest.raises(ScenarioError, match="nothing to sweep"):
        expand(path, grid={}, overrides=[])
    proc = subprocess.run([sys.executable, "-m", "fedsim", "sweep", str(path), "--grid", "federation.lr=-1"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "federation.lr" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_sweep_runs_each_point_and_writes_table_and_plot(tmp_path):
    path = _write(tmp_path, federation={"rounds": 1}, data={"n_subjects": 40},
                  membership={"eval_size": 4, "aux_samples": 4, "targets": ["global_model"]},
                  attacks=[{"name": "mia_loss_threshold"}])
    points = expand(path, grid=parse_grid(["defenses=[[], [{name: secure_aggregation}]]", "federation.lr=0.001,0.05"]),
                    overrides=[])[1:3]  # (no defense, lr 0.05) and (secure aggregation, lr 0.001)
    folder, rows = run_sweep(points, out_dir=tmp_path / "out", log=lambda _: None)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    table = list(csv.DictReader((folder / "sweep.csv").open()))
    assert len(table) == 2 and "mia_loss_threshold@global_model.auc" in table[0]
    assert float(table[1]["test_mae"]) != float(table[0]["test_mae"])
    assert (folder / "privacy_utility.png").stat().st_size > 1000 and (folder / "sweep.md").is_file()
    page = (folder / "sweep.html").read_text()
    assert "data:image/png;base64," in page and 'href="#privacy-and-utility"' in page  # the plot, inlined
    assert "the run recorded none" not in page  # the points' provenance
    heading = (folder / "sweep.md").read_text().split("## Points")[1].strip().splitlines()[0]
    assert "test MAE" in heading and "mia_loss_threshold @ global_model: AUC" in heading and "test_mae" not in heading
    assert '<abbr title="Area under the ROC curve' in page  # the readable heading gets the metric's tooltip
    # the same points two at a time, each in its own process on one of this machine's cores: the same table
    folder2, side_by_side = run_sweep(points, out_dir=tmp_path / "out2", parallel=2, log=lambda _: None)
    for alone, beside in zip(rows, side_by_side, strict=True):
        assert beside["status"] == "completed" and beside["test_mae"] == pytest.approx(alone["test_mae"], abs=1e-3)
        engine = json.loads((Path(beside["run"]) / "summary.json").read_text())["engine"]
        assert engine["cluster"] == "local" and engine["cpus"] == 1
    assert len(list(csv.DictReader((folder2 / "sweep.csv").open()))) == 2


def test_column_headings_read_as_a_reviewer_names_them():
    from fedsim.sweep import column_heading

    assert column_heading("test_mae") == "test MAE" and column_heading("baseline_error_rate") == "baseline error rate"
    assert column_heading("reference_mae") == "centralized MAE" and column_heading("dp_epsilon") == "DP ε"
    assert column_heading("mia_whitebox@client_update.tpr_at_1pct_fpr") == "mia_whitebox @ client_update: TPR@1%FPR"
    assert column_heading("global_model.train_mae") == "global_model: train MAE"
    assert column_heading("dlg.psnr_gain") == "dlg: gain (dB)"
    for unchanged in ("federation.lr", "defenses", "status", "dlg.status"):
        assert column_heading(unchanged) == unchanged


def test_a_resumed_sweep_finds_each_point_by_its_scenario_and_checkpoint(tmp_path):
    import torch

    from fedsim.run_folder import RunFolder
    from fedsim.scenario import scenario_fingerprint
    from fedsim.server.checkpoint import Checkpoint, capture_rng
    from fedsim.sweep import recorded_run

    path = _write(tmp_path, federation={"rounds": 2})
    first, second = expand(path, grid=parse_grid(["federation.lr=0.001,0.05"]), overrides=[])
    points = tmp_path / "points"
    assert recorded_run(first, points) is None
    stopped = RunFolder.create(first.scenario, points)
    assert recorded_run(first, points) is None  # no checkpoint yet: the point starts afresh

    def checkpoint(run: RunFolder, fingerprint: str) -> None:
        Checkpoint(round=1, global_state={"w": torch.zeros(1)}, strategy={}, clients={},
                   rng=capture_rng()).write(run.checkpoint_file, fingerprint)

    checkpoint(stopped, scenario_fingerprint(second.scenario))  # a checkpoint of another point
    assert recorded_run(first, points) is None
    checkpoint(stopped, scenario_fingerprint(first.scenario))
    assert recorded_run(first, points).path == stopped.path and recorded_run(second, points) is None
    finished = RunFolder.create(first.scenario, points)
    finished.write_summary({"status": "completed"})
    assert recorded_run(first, points).path == finished.path  # a finished folder wins over a stopped one
