"""Settings: how data meets a model, and what an adversary can observe there.

A setting (`setting:` in the scenario, `federated` by default) trains whatever its world trains and
records **observations** of named kinds into the run folder; attack families consume them. Kinds
in use: `gradient` and `weights` (one client's reply in a round), `aggregate` (a round's sum, under
secure aggregation) and `final_model` (the federation's last global model), all from `federated`;
`activations` (split inference) and `exported_model` (a data lake) are the next settings'. An attack
that consumes only kinds the chosen setting cannot produce is refused before training.

A setting may be built in, `path/to/file.py:Class`, or come from the entry-point group
`fedsim.settings`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from fedsim.plugin import NoParams
from fedsim.registry import registry
from fedsim.scenario import Scenario, parse_section

if TYPE_CHECKING:
    import torch

    from fedsim.experiment import Experiment
    from fedsim.run_folder import RunFolder

GRADIENT, WEIGHTS, AGGREGATE, FINAL_MODEL = "gradient", "weights", "aggregate", "final_model"
ACTIVATIONS, EXPORTED_MODEL = "activations", "exported_model"


@dataclass
class SettingOutcome:
    """What a setting's run left for the summary, beside the observations it recorded."""

    final: dict[str, float] = field(default_factory=dict)  # metrics of the final model on the test set
    initial: dict[str, float] = field(default_factory=dict)  # ... of the initial model
    rounds_completed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # one per failed client (or party) and round
    error: str | None = None  # the run failed (the run folder still holds what was done)
    final_state: dict[str, torch.Tensor] | None = None  # the final model, when there is one
    summary: dict[str, Any] = field(default_factory=dict)  # setting-specific summary.json entries


class Setting(ABC):
    """Base of settings. Subclasses set `name` and `produces`, and implement `run`."""

    name: ClassVar[str]
    produces: ClassVar[frozenset[str]]  # every observation kind this setting can record
    section: ClassVar[str | None] = None  # a top-level YAML section it owns
    Config: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.config = self.parse_config(scenario)

    @classmethod
    def parse_config(cls, scenario: Scenario) -> Any:
        raw = scenario.sections.get(cls.section) if cls.section else None
        return parse_section(cls.Config, raw, cls.section or cls.name)

    @classmethod
    def check_scenario(cls, config: Any, scenario: Scenario) -> None:
        """Before anything is built: raise ValueError (one line naming the key) when the scenario
        cannot run in this setting."""

    @classmethod
    def outline(cls, scenario: Scenario) -> str:
        """A few words on what this scenario runs (for `fedsim validate`)."""
        return f"setting {cls.name}"

    def withheld(self) -> dict[str, str]:
        """Kinds this scenario's configuration keeps from any adversary, with the reason (shown when
        an attack that needs them is skipped)."""
        return {}

    def check(self, experiment: Experiment) -> None:
        """Before training, with the data at hand: raise ScenarioError when the run cannot work."""

    @abstractmethod
    def run(self, experiment: Experiment, run: RunFolder, *, log: Callable[[str], None]) -> SettingOutcome:
        """Train, record observations (and metrics) into `run`, and say how it went."""

    @classmethod
    def result_rows(cls, summary: dict[str, Any]) -> tuple[str, str]:
        """How the report's Result table names the `initial` and `final` models' rows."""
        return "initial global model", f"final global model (round {summary.get('rounds_completed', 0)})"

    @classmethod
    def report_setup(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        """Bullet lines this setting adds to the report's Setup (who trains what, how)."""
        return []

    @classmethod
    def report_section(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        """Markdown lines of a section of its own (what happened in this setting's run)."""
        return []


SETTINGS = registry("setting", base=Setting, group="fedsim.settings")
