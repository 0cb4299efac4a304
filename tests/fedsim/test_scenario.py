from pathlib import Path

import pytest
import yaml

from fedsim.loading import apply_override, load_scenario, validate_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import REPO, tiny_scenario


def test_shipped_scenarios_validate():
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        sc = load_scenario(path)
        assert sc.name == path.stem


def test_defaults_fill_in():
    sc = validate_scenario({"name": "x"})
    assert sc.federation.strategy == "fedavg" and sc.data.partition.by == "site"
    assert sc.attacks == [] and sc.defenses == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"federation": {"rounds": 0}}, "federation.rounds: Input should be greater than or equal to 1"),
        ({"federation": {"roundz": 3}}, "federation.roundz: unknown key"),
        ({"federation": {"rounds": "many"}}, "federation.rounds: Input should be a valid integer"),
        ({"data": {"shape": 20}}, "data.shape: must be one of 16, 32, 48, 64"),
        ({"data": {"path": "/no/such/folder"}}, "data.path: data folder not found: /no/such/folder"),
        ({"federation": {"strategy": "fedmagic"}},
         "federation.strategy: unknown strategy 'fedmagic' (valid: fedadam, fedavg, fedprox"),
        ({"task": {"model": {"name": "resnet9000"}}}, "task.model.name: unknown model 'resnet9000'"),
        ({"attacks": [{"name": "telepathy"}]}, "attacks.0: unknown attack 'telepathy'"),
        ({"federation": {"clients": 3}}, "federation.clients: must equal data.sites (2)"),
    ],
)
def test_bad_input_names_the_key(change, message):
    with pytest.raises(ScenarioError) as err:
        validate_scenario(tiny_scenario(**change))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_override_parses_yaml_values():
    raw = tiny_scenario()
    apply_override(raw, "federation.rounds=5")
    apply_override(raw, "task.model.channels=[2, 4]")
    sc = validate_scenario(raw)
    assert sc.federation.rounds == 5 and sc.task.model.channels == [2, 4]


def test_override_rejects_malformed_item():
    with pytest.raises(ScenarioError, match="expected key.path=value"):
        apply_override({}, "federation.rounds")


def test_load_reports_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ScenarioError, match="scenario file not found"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_scenario()))
    assert load_scenario(good, ["seed=9"]).seed == 9


def test_the_resolved_scenario_round_trips_with_owned_sections_at_the_top(tmp_path):
    from fedsim.scenario import scenario_to_yaml

    scenario = validate_scenario(tiny_scenario(membership={"eval_size": 6}))
    written = yaml.safe_load(scenario_to_yaml(scenario))
    assert "sections" not in written and written["membership"]["eval_size"] == 6
    assert written["membership"]["aux_samples"] == 40  # the family's defaults, filled in
    (tmp_path / "s.yaml").write_text(scenario_to_yaml(scenario))
    assert load_scenario(tmp_path / "s.yaml") == scenario
