"""The `membership:` section of a scenario (owned by the membership family)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.scenario import Section


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
