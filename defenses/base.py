"""The Defense base class and its registry.

A defense hooks at named points of a client's work (DESIGN.md, "Defenses"): the model it receives,
its data and labels, its training (wrap the model / optimizer / loader, add a loss term, act after
each step: the hooks of `fedsim.training`), its outgoing update, and the server's aggregation.
Each subclass overrides the hooks it needs; the rest pass through unchanged. Defenses run in the
order the scenario lists them. This module stays light (no torch at import), so that listing and
validating scenarios is quick; the heavy work happens in the hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from fedsim.plugin import Configurable
from fedsim.registry import registry
from fedsim.training_plan import Batch, TrainingHook

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from fedsim.scenario import FederationConfig, Scenario
    from fedsim.tasks import Task
    from fedsim.training_plan import LocalBudget


@dataclass
class ClientRound:
    """What a defense may know about the client's round it runs in."""

    client: int  # partition id
    server_round: int
    task: Task
    config: FederationConfig  # the client's hyper-parameters (batch size, epochs, lr, ...)
    rng: np.random.Generator  # seeded from (scenario seed, round, client, defense index)
    budget: LocalBudget | None = None  # this round's batch size and steps (the server's requests applied)
    state: dict[str, float] = field(default_factory=dict)  # this defense's memory of earlier rounds for
    # this client (e.g. DP steps taken); persisted by the client app in Flower's context.state
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # private tensors (a learned defense's
    # modules) kept across rounds the same way; they never leave the client


@dataclass
class ExportRound:
    """What an export gate may know about one export from a data lake (setting `data_lake`)."""

    lake: int
    task: Task
    agreed: dict[str, tuple[tuple[int, ...], str]]  # the agreed network's entries: name -> (shape, dtype)
    rng: np.random.Generator
    config: FederationConfig | None = None  # the lake's training settings (batch size, optimizer, lr)
    data: tuple[torch.Tensor, torch.Tensor] | None = None  # the lake's own (scans, labels), for fine-tuning
    flags: list[str] = field(default_factory=list)  # what the gates noticed (the export may still leave)


class ExportRefused(Exception):  # noqa: N818  (a gate's decision, not a failure)
    """Raised by an export gate that stops the export (the message, one line, says why)."""


class Defense(Configurable):
    """Base of defense plug-ins; the default hooks change nothing.

    Class flags the runner reads:
    - `once`: the defense may be listed at most once (e.g. DP-SGD: one privacy engine per model).
    - `hides_client_updates`: the server (and so every attacker) sees only the round's aggregate,
      never one client's update (secure aggregation).
    - `at_export`: an export gate of a data lake (`transform_export`), not a client's defense.
    - `at_split`: a hospital's defense in split inference (`transform_first`, `transform_features`).
    - `changes_images`: the client trains on images the defense makes of its scans (`shown`), so
      an attacker that knows the defense must train a copy of it (`fedsim.defense_copies`).
    """

    once: ClassVar[bool] = False
    hides_client_updates: ClassVar[bool] = False
    changes_images: ClassVar[bool] = False
    at_export: ClassVar[bool] = False
    at_split: ClassVar[bool] = False

    @classmethod
    def check_scenario(cls, params: BaseModel, scenario: Scenario) -> None:
        """Raise ValueError (one line) when this defense cannot work in `scenario`; runs before training."""

    def inspect_model(self, model: nn.Module, *, config: dict[str, Any], ctx: ClientRound) -> None:
        """Received-model hook, before any training: raise (one line) to refuse the round, e.g. when
        the server sent another architecture than the one agreed (`model_vetting`). `model` is what
        the client built from the message; `config` is the server's train instructions."""

    def transform_data(self, x: torch.Tensor, y: torch.Tensor, *,
                       ctx: ClientRound) -> tuple[torch.Tensor, torch.Tensor]:
        """Data and labels hook: what the client trains on this round (label noise changes `y`)."""
        return x, y

    def wrap_training(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *, ctx: ClientRound
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        """Training hook: may wrap the model, optimizer and loader (DP-SGD does, through Opacus).

        The loader yields (inputs, targets, local row indices). The client keeps sending the
        original model's weights, so a wrapper must train the original parameters in place."""
        return model, optimizer, loader

    def loss_term(self, batch: Batch, prediction: torch.Tensor, model: nn.Module, *,
                  ctx: ClientRound) -> torch.Tensor | None:
        """Training hook: a term added to each batch's task loss (None: nothing)."""
        return None

    def after_step(self, step: int, model: nn.Module, batch: Batch, *, ctx: ClientRound) -> None:
        """Training hook: runs after each local optimizer step; a learned defense trains its own
        modules here and keeps them in `ctx.tensors`."""

    def transform_update(
        self,
        update: dict[str, torch.Tensor],
        *,
        kind: str,
        reference: dict[str, torch.Tensor],
        ctx: ClientRound,
    ) -> dict[str, torch.Tensor]:
        """Outgoing-update hook. `kind` is "weights" (trained weights; `reference` holds the global
        weights the client received, so `update[k] - reference[k]` is its change) or "gradient" (a
        one-batch gradient the server asked for; it is itself the change)."""
        return update

    def simulated_sender(
        self, kind: str
    ) -> Callable[[dict[str, torch.Tensor], ClientRound], dict[str, torch.Tensor]] | None:
        """How an attacker that simulates clients and knows this defense's settings applies it to what
        it simulates of `kind` ("gradient": one record's loss gradient; "weights": one replayed weight
        change): `send(update, ctx)` -> what a client would send. None: the defense leaves such
        updates alone, or acts where a copy cannot follow. By default the outgoing-update hook, where
        a subclass overrides it; a defense acting inside training (DP-SGD) says what it does instead."""
        if type(self).transform_update is Defense.transform_update:
            return None
        return lambda update, ctx: self.transform_update(update, kind="gradient", reference=update, ctx=ctx)

    def shown(self, x: torch.Tensor) -> torch.Tensor:
        """The images a client trains on for scans `x` (`changes_images` defenses override this)."""
        return x

    def transform_first(self, first: nn.Module, *, rng: np.random.Generator) -> nn.Module:
        """Split-inference hook (`at_split`): the hospital-side layers a hospital runs (its own copy, which
        the hook may change in place)."""
        return first

    def transform_features(self, features: torch.Tensor, *, rng: np.random.Generator) -> torch.Tensor:
        """Split-inference hook (`at_split`): the features a hospital sends at the cut."""
        return features

    def transform_export(self, tensors: dict[str, torch.Tensor], *, ctx: ExportRound) -> dict[str, torch.Tensor]:
        """Export hook (`at_export` gates): what leaves the lake of what a recipe asked to export.
        Raise ExportRefused to stop it; note findings in `ctx.flags`."""
        return tensors

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        """Numbers the client reports with its update this round (e.g. DP epsilon spent so far)."""
        return {}

    def training_hook(self, ctx: ClientRound) -> TrainingHook:
        """This defense bound to its round, as the training loop sees it."""
        return _DefenseHook(self, ctx)

    def describe(self) -> dict[str, Any]:
        """The defense's parameters, for the run folder and report."""
        return self.params.model_dump(mode="json")


class _DefenseHook(TrainingHook):
    def __init__(self, defense: Defense, ctx: ClientRound) -> None:
        self.defense, self.ctx = defense, ctx

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer,
             loader: DataLoader) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        return self.defense.wrap_training(model, optimizer, loader, ctx=self.ctx)

    def loss_term(self, batch: Batch, prediction: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
        return self.defense.loss_term(batch, prediction, model, ctx=self.ctx)

    def after_step(self, step: int, model: nn.Module, batch: Batch) -> None:
        self.defense.after_step(step, model, batch, ctx=self.ctx)


DEFENSES = registry("defense", base=Defense, group="fedsim.defenses")


def defense_class(name: str, index: int) -> type[Defense]:
    """The defense class `defenses.<index>` names; an unknown one is a one-line error naming the key."""
    from fedsim.registry import PluginError

    try:
        return DEFENSES.get(name)
    except PluginError as exc:
        raise ValueError(f"defenses.{index}: {exc}") from None


def hides_client_updates(scenario: Scenario) -> bool:
    """Whether a listed defense (secure aggregation) leaves the server only the round's aggregate."""
    return any(DEFENSES.get(spec.name).hides_client_updates for spec in scenario.defenses)
