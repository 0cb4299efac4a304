"""The learned inversion by an attacker that knows the clients' defenses (Kerckhoffs's principle:
their names and settings, not a client's private state). It fits its map on its own scans passed
through its own copies of them, so that what a defense changes is part of what the map learns to
undo: update defenses (noise, pruning, clipping) on each simulated gradient or replayed update, and
a defense that changes the images a client trains on (the latent perturbation) trained on the
attacker's scans through the global model. Where an update defense is copied, observations are
scaled to unit norm, since a noised or pruned output-bias entry is no error to divide by. Defenses it
cannot copy (label noise, Soteria, DP-SGD in a multi-step update) are named in its result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from fedsim.attacks.base import ATTACKS, DefenseCopy, Observation, ThreatModel
from fedsim.attacks.gradient_inversion.plugins import LearnedInversion, LearnedParams

if TYPE_CHECKING:
    import torch
    from torch import nn


class AdaptiveParams(LearnedParams):
    copy_epochs: int = Field(2, ge=1, le=50, description="epochs the attacker's copy of an image-changing defense "
                             "(latent_perturbation) trains on its own scans through the global model")


def through_updates(copies: Sequence[DefenseCopy], model: nn.Module,
                    names: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Rows (flattened in `names` order) -> what the copied update defenses, in stack order, send for
    each row taken as a client's gradient or weight change."""
    import torch

    shapes = {n: p.shape for n, p in model.named_parameters()}
    sizes = [shapes[n].numel() for n in names]

    def sent(rows: torch.Tensor) -> torch.Tensor:
        out = []
        for row in rows:
            parts = {n: t.reshape(shapes[n]) for n, t in zip(names, row.split(sizes), strict=True)}
            for c in copies:
                parts = c.send(parts)  # type: ignore[misc]
            out.append(torch.cat([parts[n].flatten() for n in names]))
        return torch.stack(out)

    return sent


class Lazy:
    """A function built on its first call (a copy's training is skipped when the fit is cached)."""

    def __init__(self, build: Callable[[], Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self._build, self._fn = build, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            self._fn = self._build()
        return self._fn(x)


@ATTACKS.register("adaptive_learned_inversion")
class AdaptiveLearnedInversion(LearnedInversion):
    """Learned inversion fitted through the attacker's own copies of the clients' defenses (it
    knows their names and settings, not their private state)."""

    threat: ClassVar[ThreatModel] = ThreatModel(hyperparameters=True, auxiliary=True, defenses=True)
    Params = AdaptiveParams

    def adapted(self, obs: Observation, model: nn.Module) -> dict[str, Any]:
        from fedsim.attacks.gradient_inversion import learned

        p = self.params
        updates = [c for c in obs.defenses if c.send is not None and obs.kind in c.kinds]
        images = [c for c in obs.defenses if c.train_shown is not None]
        copied = {c.name for c in updates + images}
        out: dict[str, Any] = {"tag": repr(sorted(c.settings for c in updates + images)), "copied": sorted(copied),
                               "not_copied": sorted({c.name for c in obs.defenses} - copied)}
        if updates:
            out["sent"] = through_updates(updates, model, learned.trainable_names(model))
        if images:
            trainer = images[0].train_shown  # an image-changing defense owns the training loop: listed once

            def train() -> Callable[[torch.Tensor], torch.Tensor]:
                scans, targets = obs.population(p.aux_subjects)
                return trainer(model, scans, targets, batch_size=obs.batch_size or 8,  # type: ignore[misc]
                               epochs=p.copy_epochs, seed=p.seed)

            key = learned.state_digest(obs.global_state, repr((images[0].settings, p.model_dump())))
            if key not in _COPIES:  # one copy per global model: a round's observations share it
                _COPIES.clear()
                _COPIES[key] = Lazy(train)
            out["shown"] = _COPIES[key]
        return out


_COPIES: dict[str, Lazy] = {}  # the last copy of an image-changing defense, by global weights and settings
