"""The scenario schema: one validated, frozen pydantic model per core YAML section.

Only the schema lives here. Reading a file, `--set` overrides and the checks that span plug-ins are
in `fedsim.loading`, which validates once, at the edge; every error names its key path, e.g.
``federation.rounds: must be >= 1``, and is raised as :class:`ScenarioError` (exit code 2 in the CLI).
Sections owned by a setting or an attack family (``membership:``) are kept here as raw mappings in
`Scenario.sections`; their owner validates them. Defaults are documented in docs/scenarios.md.
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
RAY_ADDRESS = r"(ray://)?[A-Za-z0-9_.-]+:(\d{1,5})"  # a Ray cluster's GCS (host:6379) or Ray Client address
TABLE_DATASETS = ("diabetes",)  # clinical records without scans or sites (fedsim/data/datasets.py)


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
    neurodegeneration: bool = Field(False, description="synthetic_brain only: diagnose part of each site's "
                                    "subjects with an Alzheimer-like disease (label `diagnosis`)")
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
    convs: int = Field(1, ge=1, le=4, description="brain_age_cnn: convolutions per block before each pooling "
                       "(2: the VGG-style CNN of He et al.'s split-inference attacks)")

    @field_validator("convs")
    @classmethod
    def _convs_for_brain_age_cnn(cls, v: int, info: ValidationInfo) -> int:
        name = info.data.get("name")
        if v != 1 and name != "brain_age_cnn":
            raise ValueError(f"only brain_age_cnn stacks convolutions per block, not '{name}'")
        return v

    @field_validator("channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every channel width must be >= 1")
        return v


class TaskConfig(Section):
    name: str = "brain_age"
    model: ModelConfig = ModelConfig()
    target: str | None = Field(None, description="task clinical: the record column it predicts (a two-valued one; "
                               "default: the table's own, e.g. diabetes' progression_high)")
    features: list[str] | None = Field(None, description="task clinical: the record columns it reads (default: "
                                       "every column but the target and what is derived from it)")


class AugmentConfig(Section):
    flip: float = Field(0.5, ge=0, le=1, description="probability of a left-right flip")
    shift: float = Field(2.0, ge=0, le=8, description="largest shift along each axis, voxels")
    intensity: float = Field(0.1, ge=0, le=1, description="z-scored intensities scaled by 1 +- this and shifted "
                                                          "by +- this")


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
    augment: AugmentConfig | None = Field(None, description="random views of every training batch (true: the "
                                                            "defaults; default: none)")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value


class ResourcesConfig(Section):
    num_cpus: float = Field(1.0, gt=0, description="CPUs per client; sets how many run at once")
    num_gpus: float = Field(0.0, ge=0, description="GPU fraction per client (0 = CPU)")
    ray_address: str | None = Field(None, description="join this Ray cluster (auto, host:6379, ray://host:10001); "
                                                      "default: a private local Ray")
    timeout_s: float = Field(3600.0, gt=0, description="longest wait for the clients of one round")
    start_timeout_s: float | None = Field(None, gt=0, description="longest wait for every client to come up "
                                          "(default: 60 s + 0.1 s per client)")

    def start_timeout(self, clients: int) -> float:
        """How long every client may take to come up (each answers a query through an actor), and how
        long a run waits for room on a busy cluster."""
        return self.start_timeout_s or 60.0 + 0.1 * clients

    @field_validator("ray_address", mode="after")
    @classmethod
    def _cluster_address(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        if match := re.fullmatch(RAY_ADDRESS, value):
            if not 0 < int(match.group(2)) <= 65535:
                raise ValueError(f"{value!r}: port {match.group(2)} is not in 1-65535")
            return value
        if value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is a dashboard (job) address: give the cluster's GCS address (host:6379), "
                             "ray://host:10001 or auto; to submit a job use `fedsim submit --address`")
        raise ValueError(f"{value!r} is not a Ray cluster address: use auto, host:port or ray://host:port "
                         "(a host name or IPv4 address)")


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


class AttackSpec(PluginSpec):
    timeout_s: float | None = Field(None, gt=0, description="stop this attack after so many seconds and record it "
                                    "as failed (it then runs in a process of its own)")


class FaultSpec(Section):
    """A fault injected into one client's round, to study (and test) how a federation copes."""

    kind: Literal["raise", "hang", "nan", "bad_shape"] = Field(
        description="raise: the client fails; hang: it stops replying for `seconds`; nan / bad_shape: it sends "
                    "non-finite or wrongly shaped arrays")
    round: int = Field(ge=1)
    client: int = Field(ge=0)
    seconds: float = Field(600.0, gt=0, description="hang: how long (the server waits resources.timeout_s)")


class TargetConfig(Section):
    clients: list[int] | None = Field(None, description="client ids to observe; none = every client")
    rounds: list[int] | None = Field(default_factory=lambda: [1], description="rounds to observe; none = all")


class ServerConfig(Section):
    """What the server does beyond honest aggregation: which updates it records, how it cheats."""

    behaviours: list[PluginSpec] = Field(default_factory=list, description="malicious-server behaviours")
    targets: TargetConfig = TargetConfig()
    capture: bool | None = Field(None, description="record targeted updates; default: when attacks are listed")


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
    setting: str = Field("federated", description="how data meets the model: a registered setting, "
                         "or path/to/file.py:Class (fedsim.settings)")
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    federation: FederationConfig = FederationConfig()
    resources: ResourcesConfig = ResourcesConfig()
    output: OutputConfig = OutputConfig()
    server: ServerConfig = ServerConfig()
    attacks: list[AttackSpec] = Field(default_factory=list)
    defenses: list[PluginSpec] = Field(default_factory=list)
    faults: list[FaultSpec] = Field(default_factory=list, description="injected client faults (robustness studies)")
    reference: Literal["none", "centralized"] = Field("none", description="centralized: also train the model on "
                                                      "the pooled training data with the same budget, reported beside")
    sweep: SweepConfig = SweepConfig()
    sections: dict[str, Any] = Field(default_factory=dict, description="the other top-level sections, "
                                     "owned by a setting or an attack family (e.g. membership), raw")

    @model_validator(mode="before")
    @classmethod
    def _collect_sections(cls, raw: Any) -> Any:
        """Top-level keys that are not core sections belong to a setting or family (checked by fedsim.loading)."""
        if not isinstance(raw, dict):
            return raw
        core = {k: v for k, v in raw.items() if k in cls.model_fields and k != "sections"}
        extra = {k: v for k, v in raw.items() if k not in cls.model_fields}
        return {**core, "sections": {**raw.get("sections", {}), **extra}}

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        by_site = self.data.partition.by == "site" and not self.data.from_disk  # real data: checked on its sites
        if by_site and self.data.dataset in TABLE_DATASETS:  # one site holding everything: central training only
            if self.federation.clients > 1:
                raise ValueError(f"data.partition.by: dataset '{self.data.dataset}' has no sites to split by; "
                                 "partition it iid or dirichlet")
            by_site = False
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
        for i, fault in enumerate(self.faults):
            if fault.client >= self.federation.clients:
                raise ValueError(f"faults.{i}.client: client {fault.client} does not exist "
                                 f"(clients are 0..{self.federation.clients - 1})")
            if fault.round > self.federation.rounds:
                raise ValueError(f"faults.{i}.round: round {fault.round} is outside 1..{self.federation.rounds}")
        return self

    @property
    def captures_updates(self) -> bool:
        """Whether the server records targeted client updates into the run folder."""
        return self.server.capture if self.server.capture is not None else bool(self.attacks)


def parse_params(model: type[BaseModel], params: dict[str, Any]) -> Any:
    """Validate a plug-in's `params` mapping; errors become one line (`params.x: ...`)."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise ValueError(format_errors(exc, prefix="params")) from None


def parse_section(model: type[BaseModel], raw: Any, section: str) -> Any:
    """Validate a setting's or family's own section; errors name it (`membership.eval_size: ...`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{section}: must be a mapping of keys")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(format_errors(exc, prefix=section)) from None


def shown_key(part: Any) -> str:
    """A key as an error message names it: printable as it is, else quoted (a message stays one line)."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """Every pydantic error of `exc` as `key.path: message`, joined on one line."""
    parts = []
    for err in exc.errors():
        loc = ".".join(shown_key(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{loc}: {msg}" if loc else msg)  # model-level messages carry their own path
    return "; ".join(parts)


def scenario_fingerprint(scenario: Scenario) -> str:
    """Which resolved scenario a checkpoint belongs to (kept in its header)."""
    import hashlib

    return hashlib.sha256(scenario_to_yaml(scenario).encode()).hexdigest()[:16]


def scenario_to_yaml(scenario: Scenario) -> str:
    """The resolved scenario (defaults filled in) as YAML, for the run folder; owned sections are
    written at the top level, where the user wrote them."""
    raw = scenario.model_dump(mode="json")
    sections = raw.pop("sections")
    return yaml.safe_dump({**raw, **sections}, sort_keys=False)

