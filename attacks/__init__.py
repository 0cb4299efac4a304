"""Attack plug-ins (the `attacks:` list of a scenario). Built-in attacks register on import."""

from fedsim.attacks.base import (
    ATTACKS,
    Attack,
    MembershipAttack,
    MembershipTarget,
    Observation,
    Reconstruction,
    ThreatModel,
)
from fedsim.attacks.gradient_inversion import plugins as _gradient_inversion  # noqa: F401  (registers dlg, ...)
from fedsim.attacks import imprint as _imprint  # noqa: F401  (registers imprint)
from fedsim.attacks.membership import plugins as _membership  # noqa: F401  (registers mia_*)

__all__ = ["ATTACKS", "Attack", "MembershipAttack", "MembershipTarget", "Observation", "Reconstruction",
           "ThreatModel"]
