"""Membership-inference attacks as scenario plug-ins; each declares what it is given.

Black box (predictions only): `mia_loss_threshold`, `mia_shadow`, `mia_lira`. White box (the
parameters): `mia_whitebox`. On one client's update as the server sees it: `mia_update_alignment`
(first order: the scan's gradient along the update) and `mia_update_loss_drop` (how much the update
lowered the scan's loss).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field

from fedsim.attacks.base import ATTACKS, MembershipAttack, MembershipTarget, ThreatModel
from fedsim.plugin import NoParams
from fedsim.settings.base import WEIGHTS

if TYPE_CHECKING:  # the scoring code (torch, scikit-learn) loads where an attack runs
    import torch


def _leaked(target: MembershipTarget) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if target.aux_members is None or target.aux_nonmembers is None:
        raise ValueError("this attack needs leaked samples (membership.aux_samples > 0)")
    return (*target.aux_members, *target.aux_nonmembers)


def _pooled(target: MembershipTarget) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Leaked members, leaked non-members and population scans in one pool, and which are members."""
    import torch

    mx, my, nx, ny = _leaked(target)
    px, py = target.population if target.population is not None else (nx[:0], ny[:0])
    is_member = np.r_[np.ones(len(my), dtype=bool), np.zeros(len(ny) + len(py), dtype=bool)]
    return torch.cat([mx, nx, px]), torch.cat([my, ny, py]), is_member


@ATTACKS.register("mia_loss_threshold")
class LossThreshold(MembershipAttack):
    """Black box: a threshold on the per-sample error, calibrated on leaked members and non-members."""

    def membership_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        from fedsim.attacks.membership.blackbox import threshold_attack

        mx, my, nx, ny = _leaked(target)
        return threshold_attack(target.predict, x, y, aux_member_x=mx, aux_member_y=my, aux_non_x=nx, aux_non_y=ny)


class ShadowParams(NoParams):
    n_shadows: int = Field(4, ge=1, le=64)


SHADOW_THREAT = ThreatModel(per_client_updates=False, architecture=False, auxiliary=True, hyperparameters=True)
"""Predictions, leaked samples, and the training recipe (to train shadow models)."""


@ATTACKS.register("mia_shadow")
class Shadow(MembershipAttack):
    """Black box: shadow models trained on leaked data with the known recipe; a classifier on their errors."""

    threat: ClassVar[ThreatModel] = SHADOW_THREAT
    Params = ShadowParams

    def membership_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        from fedsim.attacks.membership.blackbox import shadow_attack

        ax, ay, _ = _pooled(target)
        return shadow_attack(target.train_many, target.predict, x, y, aux_x=ax, aux_y=ay,
                             n_shadows=self.params.n_shadows, seed=target.seed)


class LiraParams(NoParams):
    n_shadows: int = Field(8, ge=2, le=256)
    online: bool = False
    calibrate: bool = True  # map shadow statistics onto the target's scale using known non-members


@ATTACKS.register("mia_lira")
class LiRA(MembershipAttack):
    """Black box: likelihood-ratio attack with per-example Gaussians from shadow models (offline or online)."""

    threat: ClassVar[ThreatModel] = SHADOW_THREAT
    Params = LiraParams

    def membership_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        from fedsim.attacks.membership.blackbox import lira_scores

        ax, ay, is_member = _pooled(target)
        return lira_scores(target.train_many, target.predict, x, y, aux_x=ax, aux_y=ay,
                           aux_is_member=is_member if self.params.calibrate else None,
                           n_shadows=self.params.n_shadows, online=self.params.online, seed=target.seed)


class WhiteBoxParams(NoParams):
    reference: bool = False  # add gradient features against the known non-members' mean gradient
    C: float = Field(0.1, gt=0)  # inverse L2 strength of the classifier


@ATTACKS.register("mia_whitebox")
class WhiteBox(MembershipAttack):
    """White box: per-sample loss and per-layer gradient norms, a monotone classifier (smaller = member,
    never turned round) fitted on leaked samples and the population's known non-members."""

    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False, architecture=True, auxiliary=True)
    Params = WhiteBoxParams

    def membership_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        from fedsim.attacks.membership.whitebox import whitebox_attack

        mx, my, nx, ny = _leaked(target)
        return whitebox_attack(target.model, target.loss_fn, x, y, aux_member_x=mx, aux_member_y=my,
                               aux_non_x=nx, aux_non_y=ny, population=target.population,
                               reference=self.params.reference, C=self.params.C)


class AlignmentParams(NoParams):
    # subtract / project out the known non-members' mean gradient: measured to help on a client's
    # first-round update (from a random init every gradient shares one direction), to hurt later
    reference: Literal["none", "centre", "project", "both"] = "none"


class UpdateAttack(MembershipAttack):
    """Base of attacks on one client's update: the global model the server sent and what came back."""

    targets: ClassVar[tuple[str, ...]] = ("client_update",)
    consumes: ClassVar[frozenset[str]] = frozenset({WEIGHTS})

    def membership_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        if target.global_state is None or target.update_state is None or target.model is None:
            raise ValueError("needs the client's update and the global model it started from")
        return self.update_scores(target, x, y)

    @abstractmethod
    def update_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Member scores from `target.global_state` and `target.update_state` (both present)."""


@ATTACKS.register("mia_update_alignment")
class UpdateAlignment(UpdateAttack):
    """On a client's update: does this scan's gradient at the global model point along the update,
    beyond the direction every scan of the population shares (the known non-members' mean gradient)?"""

    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=True, architecture=True, auxiliary=True)
    Params = AlignmentParams

    def update_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        import torch

        from fedsim.attacks.membership.whitebox import update_alignment_scores

        model = copy.deepcopy(target.model)
        model.load_state_dict(target.global_state)
        reference = None
        if self.params.reference != "none":
            _, _, nx, ny = _leaked(target)
            if target.population is not None:
                nx, ny = torch.cat([nx, target.population[0]]), torch.cat([ny, target.population[1]])
            reference = (nx, ny)
        return update_alignment_scores(model, target.loss_fn, target.global_state, target.update_state, x, y,
                                       reference=reference, mode=self.params.reference)


class LossDropParams(NoParams):
    # log(loss before / after) instead of the difference: measured better when a client fits its scans
    # closely (a small MLP), worse on brain-age updates (round 1 / 8 AUC 0.59 / 0.68 vs 0.68 / 0.77)
    relative: bool = False


@ATTACKS.register("mia_update_loss_drop")
class UpdateLossDrop(UpdateAttack):
    """On a client's update: how much did the update lower this scan's loss? Needs no leaked samples."""

    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=True, architecture=True, auxiliary=False)
    Params = LossDropParams

    def update_scores(self, target: MembershipTarget, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        from fedsim.attacks.membership.whitebox import update_loss_drop_scores

        return update_loss_drop_scores(target.model, target.loss_fn, target.global_state, target.update_state,
                                       x, y, relative=self.params.relative)
