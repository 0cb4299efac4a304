"""The Attack base class, its threat model, and the observation it is handed.

Every attack belongs to a family (`fedsim.families`: reconstruction, membership, ...) and declares
its threat model as a `ThreatModel`; the family builds what that threat model grants, and nothing
more (DESIGN.md, "Threat model in code"). Attacks are registered by YAML name;
`path/to/file.py:Class` and the entry-point group `fedsim.attacks` also work. This module stays
light (no torch at import), so that listing and validating scenarios is quick.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.plugin import Configurable
from fedsim.registry import registry
from fedsim.settings.base import FINAL_MODEL, GRADIENT, WEIGHTS

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from fedsim.families import AttackFamily


@dataclass(frozen=True)
class ThreatModel:
    """What an attacker needs; anything not asked for is withheld."""

    per_client_updates: bool = True  # False: only the aggregate would do
    architecture: bool = True  # the model class and task loss (the server ships the model, so usually known)
    hyperparameters: bool = False  # the client's batch size, local steps and learning rate
    labels: bool = False  # the true targets of the attacked batch
    auxiliary: bool = False  # scans from the same population (the server's own held-out set)
    defenses: bool = False  # the clients' defense stack, names and settings (Kerckhoffs), not their private state

    def describe(self) -> str:
        granted = [name.replace("_", " ") for name, on in vars(self).items() if on]
        return ", ".join(granted) or "nothing"


@dataclass(frozen=True)
class DefenseCopy:
    """An attacker's own instance of one of the clients' defenses (same name and settings, none of a
    client's private state), as far as it can run it: `send` applies its update transform to one
    simulated update of `kinds` ("gradient", "weights"; a dict of tensors); `train_shown(model, scans,
    targets, batch_size, epochs, seed)` trains it as a client would on the attacker's scans and returns scans -> the
    images a client trains on. None where the defense does neither."""

    name: str
    settings: str = ""  # the defense's name and params: what makes two copies alike (fits are cached by it)
    send: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    kinds: tuple[str, ...] = ()  # the observation kinds `send` follows
    train_shown: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass(frozen=True)
class Observation:
    """One client's reply in one round, as the server saw it, filtered by the threat model."""

    round: int
    client: int
    kind: str  # "gradient" (one batch, FedSGD) or "weights" (after local training)
    update: dict[str, torch.Tensor]
    global_state: dict[str, torch.Tensor]
    num_examples: int  # clients report it for weighting, so every server knows it
    input_shape: tuple[int, ...] | None = None  # one sample, e.g. (1, 32, 32, 32); with the architecture
    model_factory: Callable[[], nn.Module] | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    metrics_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None  # the task's scores
    batch_size: int | None = None
    local_steps: int | None = None
    lr: float | None = None
    labels: torch.Tensor | None = None
    auxiliary: torch.Tensor | None = None  # the server's own held-out scans
    population: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None  # (n, slices=0) -> (scans,
    # targets) of n other people of the same population (an attacker's own data; with auxiliary)
    optimizer: dict[str, Any] | None = None  # the clients' optimizer: name, momentum, weight_decay
    behaviours: tuple[str, ...] = ()
    defenses: tuple[DefenseCopy, ...] = ()  # the attacker's own copies of the clients' defenses (threat.defenses)
    recipe: dict[str, Any] | None = None  # data_lake: the training code the owner submitted (name, params)
    owner_state: dict[str, torch.Tensor] | None = None  # data_lake: what the owner prepared outside and kept
    split: int | None = None  # split_inference: the convolution blocks the hospital ran before sending
    provider_scans: int | None = None  # split_inference: the first this many population scans trained the network

    def model(self) -> nn.Module:
        """The global model the client started from (needs the architecture)."""
        if self.model_factory is None:
            raise PermissionError("this attack's threat model does not include the architecture")
        model = self.model_factory()
        model.load_state_dict(self.global_state)
        return model

    def images_in_update(self) -> int:
        """How many distinct samples went into the update, as far as the attacker can tell."""
        if self.kind == "gradient":
            return self.batch_size or self.num_examples
        if self.batch_size and self.local_steps:
            return min(self.num_examples, self.batch_size * self.local_steps)
        return self.num_examples


@dataclass
class Reconstruction:
    images: torch.Tensor  # (B, C, *spatial), in the model's input space
    labels: torch.Tensor | None = None  # recovered targets, if the attack recovers them
    extra: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable details (objective, iterations)


class Attack(Configurable):
    """Base of attacker plug-ins: name the `family` the attack belongs to and declare its `threat`
    (and `Params`). Subclass ReconstructionAttack or MembershipAttack, or a family's own base."""

    family: ClassVar[str | type[AttackFamily]]  # a registered family name, path/to/file.py:Class, or the class
    threat: ClassVar[ThreatModel] = ThreatModel()
    consumes: ClassVar[frozenset[str]] = frozenset()  # observation kinds it works on (fedsim.settings.base)


class ReconstructionAttack(Attack, ABC):
    """Base of reconstruction attacks: rebuild a client's inputs from one recorded update."""

    family: ClassVar[str] = "reconstruction"
    consumes: ClassVar[frozenset[str]] = frozenset({GRADIENT, WEIGHTS})

    @abstractmethod
    def reconstruct(self, observation: Observation) -> Reconstruction:
        """Recover the client's inputs (and targets, if it can) from one observation."""


@dataclass(frozen=True)
class MembershipTarget:
    """A model whose training data is in question, as the threat model lets the attacker see it."""

    name: str  # "centralized", "global_model" or "client_update"
    predict: Callable[[torch.Tensor], torch.Tensor]  # query access: always granted
    model: nn.Module | None = None  # white box: the parameters (architecture)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    global_state: dict[str, torch.Tensor] | None = None  # client_update: what the server sent ...
    update_state: dict[str, torch.Tensor] | None = None  # ... and what the client sent back
    train_fn: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None  # the training recipe ...
    # ... for several independent models at once: [(x, y, seed), ...] -> their predict functions
    train_many: Callable[[list], list[Callable[[torch.Tensor], torch.Tensor]]] | None = None
    aux_members: tuple[torch.Tensor, torch.Tensor] | None = None  # leaked samples known to be members
    aux_nonmembers: tuple[torch.Tensor, torch.Tensor] | None = None  # ... and known non-members
    population: tuple[torch.Tensor, torch.Tensor] | None = None  # more known non-members (auxiliary)
    seed: int = 0


class MembershipAttack(Attack, ABC):
    """Base of membership-inference attacks: a member score (higher = member) for each candidate."""

    family: ClassVar[str] = "membership"
    consumes: ClassVar[frozenset[str]] = frozenset({FINAL_MODEL, WEIGHTS})  # the global model, a client's update
    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, architecture=False, auxiliary=True)
    targets: ClassVar[tuple[str, ...]] = ("centralized", "global_model", "client_update")

    @abstractmethod
    def membership_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Scores for candidates (x, y); the runner turns them into ROC, AUC and TPR at low FPR."""


ATTACKS = registry("attack", base=Attack, group="fedsim.attacks")
