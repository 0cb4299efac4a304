"""The scenario: one validated, frozen pydantic model per YAML section.

Validation happens once, at the edge (`load_scenario`); every error names its key path, e.g.
``federation.rounds: must be >= 1``, and is raised as :class:`ScenarioError` (exit code 2 in the CLI).
Defaults are documented in docs/scenarios.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)



KEY_PATH = r"[A-Za-z_]\w*(\.(\w+))*"  # a.b.c, with numbers picking list entries: defenses.0.params.sigma


class ScenarioError(ValueError):
    """Bad scenario input; the message is one line naming the key path or file."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


DISK_DATASETS = ("ixi", "ixi_tiny", "msd", "bids", "nifti_csv")  # read from data.path (fedsim/data/loaders.py)


class PartitionConfig(Section):
    by: Literal["site", "iid", "dirichlet", "column", "file"] = "site"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more skew)")
    age_bins: int = Field(5, ge=2, le=50)
    min_size: int = Field(4, ge=1, description="smallest client training set accepted")
    column: str | None = Field(None, validate_default=True, description="by: column - the metadata column "
                               "(site, scanner, ...)")
    file: Path | None = Field(None, validate_default=True, description="by: file - CSV or JSON of subject -> "
                              "client (or 'test')")
    test_column: str | None = Field(None, description="metadata column whose value 'test' marks the "
                                    "server's test set (e.g. Fed-IXITiny's split); default: a random share")

    @field_validator("column", mode="after")
    @classmethod
    def _column(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("by") == "column":
            raise ValueError("required when by is 'column' (e.g. column: manufacturer)")
        return v

    @field_validator("file", mode="after")
    @classmethod
    def _file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None and info.data.get("by") == "file":
            raise ValueError("required when by is 'file' (a CSV or JSON of subject -> client)")
        if v is not None and not v.expanduser().is_file():
            raise ValueError(f"partition file not found: {v}")
        return v


class DataConfig(Section):
    dataset: str = "synthetic_brain"
    n_subjects: int = Field(150, ge=8, le=100_000, description="synthetic cohorts only (see max_subjects)")
    shape: int = Field(32, description="volume side in voxels (16, 32, 48 or 64)")
    sites: int = Field(3, ge=1, le=8, description="synthetic cohorts only; real data has its own sites")
    path: Path | None = Field(None, validate_default=True, description="data folder, for datasets read from disk")
    test_fraction: float = Field(0.2, gt=0, lt=0.9)
    val_fraction: float = Field(0.15, ge=0, lt=0.9)
    partition: PartitionConfig = PartitionConfig()
    # on-disk datasets only (docs/datasets.md)
    max_subjects: int | None = Field(None, ge=2, description="cap on subjects read, balanced over sites")
    spacing: float | None = Field(None, gt=0, le=20, description="isotropic voxel size in mm; "
                                  "default: whatever fits the field of view into shape^3")
    normalize: Literal["auto", "zscore", "percentile", "window"] = Field(
        "auto", description="per-volume intensity scaling; auto: CT -> window, else zscore")
    window: tuple[float, float] | None = Field(None, description="intensity window [low, high] "
                                               "(CT in HU; default -175..250 soft tissue)")
    strict: bool = Field(False, description="a corrupt or mismatched file is an error, not skipped")
    csv: str = Field("subjects.csv", description="nifti_csv: the table's file name inside data.path")
    target_column: str | None = Field("age", description="nifti_csv: the age column (null: none)")
    age_column: str = Field("age", description="bids: participants.tsv column holding the age")
    site_column: str | None = Field(None, description="bids / nifti_csv: column naming the site "
                                    "(default: 'site' when present, else one site)")

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: int) -> int:
        if v not in (16, 32, 48, 64):
            raise ValueError("must be one of 16, 32, 48, 64")
        return v

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        dataset = info.data.get("dataset")
        if v is None and dataset in DISK_DATASETS:
            raise ValueError(f"required for dataset '{dataset}' (a folder you already have): set it, "
                             "e.g. --set data.path=/path/to/data")
        if v is not None and not v.expanduser().is_dir():
            raise ValueError(f"data folder not found: {v}")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError("must be [low, high] with low < high")
        return v

    @property
    def from_disk(self) -> bool:
        """Whether the cohort is read from data.path, so that sites come from the data, not data.sites."""
        return self.dataset in DISK_DATASETS


class ModelConfig(Section):
    name: str = "brain_age_cnn"
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32, 64], min_length=1, max_length=8)
    norm: Literal["instance", "group", "none"] = Field("instance", description="none: for lenet")
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every channel width must be >= 1")
        return v


class TaskConfig(Section):
    name: str = "brain_age"
    model: ModelConfig = ModelConfig()


class FederationConfig(Section):
    clients: int = Field(3, ge=1, le=1000)
    rounds: int = Field(5, ge=1, le=10_000)
    strategy: str = "fedavg"
    strategy_args: dict[str, float] = Field(default_factory=dict)
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1, description="if set, overrides local_epochs")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only)")
    weight_decay: float = Field(0.0, ge=0)


class ResourcesConfig(Section):
    num_cpus: float = Field(1.0, gt=0, description="CPUs per client; sets how many run at once")
    num_gpus: float = Field(0.0, ge=0, description="GPU fraction per client (0 = CPU)")
    ray_address: str | None = Field(None, description="join this Ray cluster; default: private local Ray")
    timeout_s: float = Field(3600.0, gt=0, description="longest wait for the clients of one round")


class OutputConfig(Section):
    dir: Path = Path("runs")
    save_model: bool = True


class PluginSpec(Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                              description="name of this entry in results (default: the plug-in name)")

    @property
    def key(self) -> str:
        """How results of this entry are named: its label, else the plug-in name."""
        return self.label or self.name


class TargetConfig(Section):
    clients: list[int] | None = Field(None, description="client ids to observe; none = every client")
    rounds: list[int] | None = Field(default_factory=lambda: [1], description="rounds to observe; none = all")


class ServerConfig(Section):
    """What the server does beyond honest aggregation: which updates it records, how it cheats."""

    behaviours: list[PluginSpec] = Field(default_factory=list, description="malicious-server behaviours")
    targets: TargetConfig = TargetConfig()
    capture: bool | None = Field(None, description="record targeted updates; default: when attacks are listed")


class MembershipConfig(Section):
    """Membership-inference evaluation: balanced member / non-member sets, leaked samples, targets."""

    eval_size: int = Field(40, ge=2, description="members + non-members scored (half each)")
    aux_samples: int = Field(40, ge=0, description="leaked samples the attacker holds (half members)")
    targets: list[Literal["centralized", "global_model", "client_update"]] = Field(
        default_factory=lambda: ["global_model"])
    client: int = Field(0, ge=0, description="client whose update is the client_update target")
    round: int = Field(1, ge=1, description="round of that update")
    delta: float = Field(1e-5, gt=0, lt=1, description="delta for the empirical epsilon lower bound")
    match_target: bool = Field(True, description="pair each scored non-member with the member of nearest "
                               "target (age), so the set's composition cannot stand in for membership")


class SweepConfig(Section):
    """A grid of scenario variants that `fedsim sweep` runs (plain `fedsim run` ignores it)."""

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key.path -> values; the cartesian "
                                       "product is run, the last key varying fastest (one curve per other key)")
    attack_metric: str | None = Field(None, description="column on the privacy axis of the plot "
                                      "(default: the first membership AUC, else the first PSNR gain)")

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not re.fullmatch(KEY_PATH, key) or key.split(".")[0] in ("sweep", "name"):
                raise ValueError(f"{key}: not a scenario key path")
            if not values:
                raise ValueError(f"{key}: needs at least one value")
        return v


class Scenario(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    federation: FederationConfig = FederationConfig()
    resources: ResourcesConfig = ResourcesConfig()
    output: OutputConfig = OutputConfig()
    server: ServerConfig = ServerConfig()
    membership: MembershipConfig = MembershipConfig()
    attacks: list[PluginSpec] = Field(default_factory=list)
    defenses: list[PluginSpec] = Field(default_factory=list)
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        by_site = self.data.partition.by == "site" and not self.data.from_disk  # real data: checked on its sites
        if by_site and self.federation.clients != self.data.sites:
            raise ValueError(
                f"federation.clients: must equal data.sites ({self.data.sites}) "
                "when data.partition.by is 'site'"
            )
        for c in self.server.targets.clients or []:
            if not 0 <= c < self.federation.clients:
                raise ValueError(f"server.targets.clients: client {c} does not exist "
                                 f"(clients are 0..{self.federation.clients - 1})")
        for r in self.server.targets.rounds or []:
            if not 1 <= r <= self.federation.rounds:
                raise ValueError(f"server.targets.rounds: round {r} is outside 1..{self.federation.rounds}")
        m, t = self.membership, self.server.targets
        if "client_update" in m.targets:
            if m.client >= self.federation.clients:
                raise ValueError(f"membership.client: client {m.client} does not exist "
                                 f"(clients are 0..{self.federation.clients - 1})")
            if m.round > self.federation.rounds:
                raise ValueError(f"membership.round: round {m.round} is outside 1..{self.federation.rounds}")
            if (t.clients is not None and m.client not in t.clients) or (t.rounds is not None and m.round not in t.rounds):
                raise ValueError(f"membership.client: the server does not observe client {m.client} in round "
                                 f"{m.round}; add them to server.targets")
        return self

    @property
    def captures_updates(self) -> bool:
        """Whether the server records targeted client updates into the run folder."""
        return self.server.capture if self.server.capture is not None else bool(self.attacks)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override (``a.b=value``), validate and check plug-in names; raise ScenarioError."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a scenario must be a mapping of sections")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_scenario(raw)


def validate_scenario(raw: dict[str, Any]) -> Scenario:
    """Validate a raw mapping into a Scenario; every error becomes one line naming its key path."""
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(_format_errors(exc)) from None
    from fedsim.scenario_plugins import check_plugins  # the registries import this module: import late

    check_plugins(scenario)
    return scenario


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``--set a.b.c=value`` to the raw mapping; the value is parsed as YAML.

    A number picks an entry of a list: ``defenses.0.params.sigma=0.05``."""
    key, sep, value = item.partition("=")
    if not sep or not re.fullmatch(KEY_PATH, key.strip()):
        raise ScenarioError(f"--set {item}: expected key.path=value")
    set_path(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `value` at a dotted key path of a raw scenario, creating sections on the way."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError(f"{key}: '{'.'.join(parts[:i])}' has no entry {part}")
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(f"{key}: '{'.'.join(parts[:i])}' is not a section")


def parse_params(model: type[BaseModel], params: dict[str, Any]) -> Any:
    """Validate a plug-in's `params` mapping; errors become one line (`params.x: ...`)."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise ValueError(_format_errors(exc, prefix="params")) from None


def _format_errors(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{loc}: {msg}" if loc else msg)  # model-level messages carry their own path
    return "; ".join(parts)


def scenario_to_yaml(scenario: Scenario) -> str:
    """The resolved scenario (defaults filled in) as YAML, for the run folder."""
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
