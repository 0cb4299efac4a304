"""A new setting and a new attack family plug in from files of their own, without touching fedsim:
a toy world where one hospital publishes the mean of its scans, and a family that asks which
patients that mean gives away. Both own a YAML section and add to the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.loading import validate_scenario
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import REPO, tiny_scenario

SETTING = '''
from pydantic import BaseModel, ConfigDict
from fedsim.settings.base import Setting, SettingOutcome


class GossipConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    party: int = 0


class Gossip(Setting):
    """One hospital publishes the mean of its training scans; nobody trains."""

    name = "gossip"
    produces = frozenset({"mean_scan"})
    section = "gossip"
    Config = GossipConfig

    def run(self, experiment, run, *, log):
        rows = list(experiment.split.clients[self.config.party].train)
        x, y = experiment.tensors(rows)
        name = f"party{self.config.party:03d}_mean"
        run.write_observation(name, update={"mean": x.mean(0)}, meta={"kind": "mean_scan", "n": len(rows)})
        run.write_truth(name, inputs=x, targets=y, rows=rows)
        log(f"party {self.config.party} published the mean of {len(rows)} scans")
        return SettingOutcome(summary={"published": 1})

    @classmethod
    def report_setup(cls, run, summary):
        return ["- Gossip: one hospital publishes the mean of its scans"]
'''

FAMILY = '''
import torch
from pydantic import BaseModel, ConfigDict
from fedsim.attacks import ATTACKS, Attack
from fedsim.families import AttackFamily


class AveragingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int = 3


class Averaging(AttackFamily):
    """Which patients does a published mean give away?"""

    name = "averaging"
    consumes = frozenset({"mean_scan"})
    section = "averaging"
    Config = AveragingConfig

    def run(self, run, experiment, specs, *, log):
        rows = []
        for spec in specs:
            attack = ATTACKS.get(spec.name)(**spec.params)
            for obs in run.observations(self.consumes):
                members = run.read_truth(obs.name)["rows"]
                pool = sorted(set(members) | set(experiment.split.test))
                x, _ = experiment.tensors(pool)
                picked = [pool[i] for i in attack.rank(obs.update()["mean"], x)[: self.config.top]]
                hits = sum(p in members for p in picked)
                rows.append({"attack": spec.key, "observation": obs.name, "status": "ok", "hits": hits,
                             "chance": self.config.top * len(members) / len(pool)})
        run.write_results(self.name, rows)
        return rows

    @classmethod
    def report_section(cls, run, summary):
        rows = summary.get(cls.summary_key()) or []
        return ["", "## Averaging attacks", *[f"- {r['attack']}: {r['hits']} of the top guesses were members "
                                               f"(chance {r['chance']:.1f})" for r in rows]]

    @classmethod
    def sweep_columns(cls, summary):
        return {f"{r['attack']}.hits": r["hits"] for r in summary.get(cls.summary_key(), [])}


class NearestToMean(Attack):
    """Rank candidates by their distance to the published mean (members pull the mean toward them)."""

    family = Averaging
    consumes = frozenset({"mean_scan"})

    def rank(self, mean, candidates):
        return torch.argsort((candidates - mean).flatten(1).pow(2).mean(1)).tolist()
'''


def _write(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "gossip.py").write_text(SETTING)
    (tmp_path / "averaging.py").write_text(FAMILY)
    return f"{tmp_path / 'gossip.py'}:Gossip", f"{tmp_path / 'averaging.py'}:NearestToMean"


def test_a_setting_and_a_family_from_files_run_and_report(tmp_path: Path):
    setting, attack = _write(tmp_path)
    raw = tiny_scenario(setting=setting, gossip={"party": 1}, averaging={"top": 2}, attacks=[{"name": attack}])
    scenario = validate_scenario(raw)
    assert scenario.sections["averaging"] == {"top": 2} and scenario.sections["gossip"] == {"party": 1}
    result = run_scenario(scenario, out_dir=tmp_path / "runs", log=lambda _: None)

    assert result.error is None and result.summary["published"] == 1
    (row,) = result.summary["averaging"]
    assert row["status"] == "ok" and row["observation"] == "party001_mean"
    assert row["hits"] == 2 > row["chance"]  # a site's mean scan sits nearest that site's own patients
    assert [f["name"] for f in result.summary["families"]] == ["averaging"]
    report = (result.run_dir / "report.md").read_text()
    assert "- Gossip: one hospital publishes the mean of its scans" in report and "## Averaging attacks" in report
    assert "## Server behaviour and attacks" not in report  # the built-in families had nothing to say

    # fedsim report rebuilds the family's section from the run folder alone, in a fresh process
    (result.run_dir / "report.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "fedsim", "report", str(result.run_dir)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "## Averaging attacks" in (result.run_dir / "report.md").read_text()


def test_an_attack_the_setting_cannot_feed_is_refused_naming_both(tmp_path: Path):
    setting, attack = _write(tmp_path)
    with pytest.raises(ScenarioError, match=r"attacks\.0: dlg consumes gradient or weights observations, which "
                                            r"setting '.*gossip.py:Gossip' cannot produce \(it produces mean_scan\)"):
        validate_scenario(tiny_scenario(setting=setting, attacks=[{"name": "dlg"}]))
    with pytest.raises(ScenarioError, match=r"attacks\.0: .*NearestToMean consumes mean_scan observations, which "
                                            r"setting 'federated' cannot produce"):
        validate_scenario(tiny_scenario(attacks=[{"name": attack}]))


def test_unknown_settings_families_and_sections_are_one_line_errors(tmp_path: Path):
    _, attack = _write(tmp_path)
    with pytest.raises(ScenarioError, match=r"setting: unknown setting 'split' \(valid: data_lake, federated"):
        validate_scenario(tiny_scenario(setting="split"))
    stray = tmp_path / "stray.py"
    stray.write_text("from fedsim.attacks import Attack\nclass Stray(Attack):\n    family = 'attribute'\n")
    with pytest.raises(ScenarioError, match=r"attacks\.0: .*Stray: unknown family 'attribute' \(valid: "
                                            r"attribute_inference, membership, reconstruction"):
        validate_scenario(tiny_scenario(attacks=[{"name": f"{stray}:Stray"}]))
    orphan = tmp_path / "orphan.py"
    orphan.write_text("from fedsim.attacks import Attack\nclass Orphan(Attack):\n    pass\n")
    with pytest.raises(ScenarioError, match=r"attacks\.0: .*Orphan names no attack family"):
        validate_scenario(tiny_scenario(attacks=[{"name": f"{orphan}:Orphan"}]))
    with pytest.raises(ScenarioError, match=r"^averaging: unknown key$"):  # a section only its family owns
        validate_scenario(tiny_scenario(averaging={"top": 1}))
    with pytest.raises(ScenarioError, match=r"averaging\.top: Input should be a valid integer"):
        validate_scenario(tiny_scenario(averaging={"top": "x"}, attacks=[{"name": attack}],
                                        setting=_write(tmp_path)[0]))
