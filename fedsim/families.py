"""Attack families: the question an attack asks of what a setting let an adversary observe.

Reconstruction (rebuild the inputs) and membership (was this record trained on?) are the built-in
families; a family can also come from `path/to/file.py:Class` or the entry-point group
`fedsim.families`. A family owns its attacks (each `Attack` names its family), its YAML section and
config model, its checks, how it runs on a run folder, its report section and its sweep columns:
the runner, `fedsim attack`, the report and the sweep loop over families and never name one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from fedsim.plugin import NoParams
from fedsim.registry import registry
from fedsim.scenario import PluginSpec, Scenario, parse_section

if TYPE_CHECKING:
    from fedsim.experiment import Experiment
    from fedsim.run_folder import RunFolder

Log = Callable[[str], None]


class AttackFamily(ABC):
    """Base of attack families. Subclasses set `name`, `consumes` (and `section` + `Config` if they
    own a YAML section) and implement `run`; the other hooks default to doing nothing."""

    name: ClassVar[str]
    consumes: ClassVar[frozenset[str]]  # observation kinds its attacks work on (see fedsim.settings)
    section: ClassVar[str | None] = None  # top-level YAML section it owns, e.g. "membership"
    Config: ClassVar[type[BaseModel]] = NoParams  # that section's pydantic model

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.config = self.parse_config(scenario)

    @classmethod
    def summary_key(cls) -> str:
        """Key of this family's result rows in summary.json (and of its part of the report)."""
        return cls.name

    @classmethod
    def parse_config(cls, scenario: Scenario) -> Any:
        """The family's own section, validated (errors name `<section>.<key>`)."""
        raw = scenario.sections.get(cls.section) if cls.section else None
        return parse_section(cls.Config, raw, cls.section or cls.name)

    @classmethod
    def check_scenario(cls, config: Any, scenario: Scenario, attacks: list[tuple[int, PluginSpec, type]]) -> None:
        """Before anything is built: raise ValueError (one line naming the key) when this family's
        `attacks` (index in `attacks:`, spec, class) cannot work in `scenario`."""

    def check(self, experiment: Experiment, specs: list[PluginSpec]) -> None:
        """Before training, with the data at hand: raise ScenarioError when an attack cannot work."""

    @abstractmethod
    def run(self, run: RunFolder, experiment: Experiment, specs: list[PluginSpec], *, log: Log) -> list[dict]:
        """Run the attacks on the run folder's observations; one JSON-ready row per result. A crashing
        attack is recorded in its row (status 'error'), never raised."""

    @classmethod
    def report_section(cls, run: RunFolder, summary: dict[str, Any]) -> list[str]:
        """Markdown lines of this family's part of report.md (from the run folder alone)."""
        return []

    @classmethod
    def sweep_columns(cls, summary: dict[str, Any]) -> dict[str, Any]:
        """Columns this family adds to a sweep point's row."""
        return {}


FAMILIES = registry("family", base=AttackFamily, group="fedsim.families")


def attack_index(scenario: Scenario, spec: PluginSpec) -> int:
    """Where `spec` stands in the scenario's `attacks:` list (for messages naming `attacks.<i>`)."""
    return scenario.attacks.index(spec) if spec in scenario.attacks else 0


def resolve_family(ref: str | type[AttackFamily]) -> type[AttackFamily]:
    """An attack's `family`: a registered name, `path/to/file.py:Class`, an entry point, or the class."""
    family = FAMILIES.get(ref) if isinstance(ref, str) else ref
    if not (isinstance(family, type) and issubclass(family, AttackFamily)):
        raise TypeError(f"{ref!r} is not an AttackFamily")
    return family


def family_ref(family: type[AttackFamily]) -> str:
    """How a run folder names a family so that `fedsim report` finds it again: its registered name,
    else `path/to/file.py:Class` (a family from a user's file)."""
    import inspect

    try:
        if FAMILIES.get(family.name) is family:
            return family.name
    except (ValueError, AttributeError):
        pass
    return f"{inspect.getfile(family)}:{family.__qualname__}"
