"""Attacks inside real federations: capture, threat-model filtering, scoring, re-runs, crash isolation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.attacks import ATTACKS, Observation, ReconstructionAttack, ThreatModel
from fedsim.attacks.reconstruction import build_observation
from fedsim.experiment import prepare
from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import REPO, tiny_scenario

pytestmark = pytest.mark.e2e

CRASHING = '''
from fedsim.attacks import ReconstructionAttack, ThreatModel

class Crashing(ReconstructionAttack):
    """Always fails: its error must be recorded while the run's other results survive."""
    threat = ThreatModel(per_client_updates=True)

    def reconstruct(self, observation):
        raise RuntimeError("attacker bug")


class Hanging(ReconstructionAttack):
    """Never returns: `timeout_s` must stop it and record it as failed."""
    threat = ThreatModel(per_client_updates=True)

    def reconstruct(self, observation):
        import time
        time.sleep(3600)
'''


def _gia(tmp_path: Path, **extra) -> dict:
    plugin = tmp_path / "crashing.py"
    plugin.write_text(CRASHING)
    return tiny_scenario(
        server={"behaviours": [{"name": "request_gradient"},
                               {"name": "request_batch_size", "params": {"batch_size": 1}}],
                "targets": {"clients": [0], "rounds": [1]}},
        attacks=[{"name": "dlg", "params": {"iterations": 30}, "timeout_s": 300},  # in a process of its own
                 {"name": f"{plugin}:Crashing"},
                 {"name": f"{plugin}:Hanging", "timeout_s": 5},
                 {"name": "learned_inversion", "params": {"aux_subjects": 60}}],
        **extra,
    )


def test_malicious_fedsgd_run_records_scores_and_survives_a_crashing_attacker(tmp_path: Path):
    scenario = validate_scenario(_gia(tmp_path))
    result = run_scenario(scenario, out_dir=tmp_path / "runs", log=lambda _: None)
    run = result.run_dir

    assert result.error is None and result.summary["status"] == "completed"
    meta = json.loads((run / "observations/round001_client000/update.json").read_text())
    assert meta["kind"] == "gradient" and meta["batch_size"] == 1
    assert meta["behaviours"] == ["request_gradient", "request_batch_size"]
    assert not (run / "observations/round001_client001").exists()  # client 1 was not targeted
    assert not (run / "observations/round002_client000").exists()  # nor was round 2
    assert (run / "private/round001_client000.safetensors").is_file()  # sent in the reply, kept by the driver

    rows = {r["attack"]: r for r in result.summary["attacks"]}
    dlg = rows["dlg"]
    assert dlg["status"] == "ok" and dlg["candidates"] > 1
    assert dlg["psnr"] == pytest.approx(dlg["prior_psnr"] + dlg["psnr_gain"])
    assert 0 <= dlg["reid_top1"] <= 1 and "target_error" in dlg
    assert (run / "attacks/dlg/round001_client000.png").is_file()
    fitted = rows["learned_inversion"]  # on the attacker's own 60 scans (x 2 with flips), no label given
    assert fitted["status"] == "ok" and fitted["aux_pairs"] == 120 and "labels" not in fitted["threat"]
    assert (run / "attacks/learned_inversion/round001_client000.png").is_file()
    crashed = next(r for name, r in rows.items() if name.endswith(":Crashing"))
    assert crashed["status"] == "error" and "attacker bug" in crashed["error"]
    hung = next(r for name, r in rows.items() if name.endswith(":Hanging"))
    assert hung["status"] == "error" and hung["error"] == "timed out after 5s (attacks.2.timeout_s)"
    report = (run / "report.md").read_text()
    assert "request_gradient" in report and "attacker bug" in report and "| dlg | 1 | 0 | gradient | 1 |" in report

    # threat model in code: dlg is not given labels or auxiliary scans, even though they exist
    experiment = prepare(scenario, log=lambda _: None)
    (recorded,) = RunFolder(run).observations()
    truth = RunFolder(run).read_truth(recorded.name)
    obs = build_observation(ATTACKS.get("dlg")(), recorded, truth, experiment=experiment)
    assert obs.labels is None and obs.auxiliary is None and obs.batch_size == 1
    ig = build_observation(ATTACKS.get("inverting_gradients")(), recorded, truth, experiment=experiment)
    assert ig.labels is not None and ig.auxiliary is not None

    class Blind(ReconstructionAttack):
        threat = ThreatModel(architecture=False)

        def reconstruct(self, observation: Observation):
            return observation.model()

    blind = build_observation(Blind(), recorded, truth, experiment=experiment)
    assert blind.model_factory is None and blind.input_shape is None and blind.batch_size is None
    with pytest.raises(PermissionError):
        blind.model()

    # the documented example attacker runs on the recording as it is
    example = REPO / "docs/examples/nearest_gradient_attack.py"
    proc = subprocess.run([sys.executable, "-m", "fedsim", "attack", str(run), "--attack",
                           f"{example}:NearestGradient", "--set", "max_candidates=4"],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    example_row = next(r for r in json.loads((run / "summary.json").read_text())["attacks"]
                       if r["attack"].endswith("NearestGradient"))
    assert example_row["status"] == "ok" and 0 < example_row["best_cosine"] <= 1

    # fedsim attack re-runs an attacker on the recorded federation without training again, also in a
    # run folder written before summary.json named its families
    summary = json.loads((run / "summary.json").read_text())
    del summary["families"]
    (run / "summary.json").write_text(json.dumps(summary))
    proc = subprocess.run([sys.executable, "-m", "fedsim", "attack", str(run), "--attack", "dlg",
                           "--set", "iterations=5"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert sum(r["attack"] == "dlg" for r in summary["attacks"]) == 1
    assert summary["rounds_completed"] == 2  # training results untouched
    assert [f["name"] for f in summary["families"]] == ["reconstruction"]
    assert "| dlg | 1 | 0 | gradient | 1 |" in (run / "report.md").read_text()


def test_bad_attack_input_fails_before_training(tmp_path: Path):
    cases = [
        ({"attacks": [{"name": "nope"}]}, "attacks.0: unknown attack 'nope'"),
        ({"attacks": [{"name": f"{tmp_path}/missing.py:X"}]}, "attack plug-in file not found"),
        ({"attacks": [{"name": "dlg", "params": {"iterations": 0}}]}, "attacks.0: params.iterations"),
        ({"server": {"targets": {"clients": [7]}}}, "server.targets.clients: client 7 does not exist"),
        ({"attacks": [{"name": "dlg"}], "server": {"capture": False}},
         "attacks.0: dlg needs per-client updates, but server.capture is false"),
        ({"server": {"behaviours": [{"name": "request_batch_size", "params": {"batch_size": 0}}]}},
         "server.behaviours.0: params.batch_size"),
    ]
    not_attack = tmp_path / "plain.py"
    not_attack.write_text("class Plain:\n    pass\n")
    cases.append(({"attacks": [{"name": f"{not_attack}:Plain"}]}, "is not a subclass of Attack"))
    for change, message in cases:
        with pytest.raises(ScenarioError, match=message.replace("(", r"\(")):
            validate_scenario(tiny_scenario(**change))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_scenario(attacks=[{"name": "nope"}])))
    proc = subprocess.run([sys.executable, "-m", "fedsim", "run", str(bad)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown attack 'nope'" in proc.stderr


def test_idlg_reads_the_class_out_of_a_classification_gradient(tmp_path: Path):
    raw = tiny_scenario(
        task={"name": "sex_classification", "model": {"channels": [4, 8]}},
        federation={"rounds": 1},
        server={"behaviours": [{"name": "request_gradient"},
                               {"name": "request_batch_size", "params": {"batch_size": 1}}],
                "targets": {"clients": [0, 1], "rounds": [1]}},
        attacks=[{"name": "idlg", "params": {"iterations": 10}}],
    )
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    rows = [r for r in result.summary["attacks"] if r["attack"] == "idlg"]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["label_accuracy"] == 1.0 for r in rows)
    assert "threat" in rows[0] and "labels" not in rows[0]["threat"]  # iDLG is not given the labels
    assert result.summary["primary_metric"] == "error_rate"
