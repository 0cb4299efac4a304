"""Attack plug-ins (the `attacks:` list of a scenario) and the built-in attack families.

Importing this package registers every built-in attack and family; it stays light (the attacks'
scoring and search code loads where an attack runs)."""

from fedsim.attacks import imprint as _imprint  # noqa: F401  (registers imprint)
from fedsim.attacks import reconstruction as _reconstruction  # noqa: F401  (the reconstruction family)
from fedsim.attacks import split_inversion as _split_inversion  # noqa: F401  (split_inversion)
from fedsim.attacks.attribute_inference import family as _attribute_family  # noqa: F401  (attribute inference)
from fedsim.attacks.attribute_inference import plugins as _attribute  # noqa: F401  (fredrikson, ...)
from fedsim.attacks.base import (
    ATTACKS,
    Attack,
    MembershipAttack,
    MembershipTarget,
    Observation,
    Reconstruction,
    ReconstructionAttack,
    ThreatModel,
)
from fedsim.attacks.data_stealing import extract as _extract  # noqa: F401  (data_stealing)
from fedsim.attacks.data_stealing import recipe as _recipe  # noqa: F401  (the compress_and_hide recipe)
from fedsim.attacks.gradient_inversion import adaptive as _adaptive  # noqa: F401  (adaptive_learned_inversion)
from fedsim.attacks.gradient_inversion import plugins as _gradient_inversion  # noqa: F401  (registers dlg, ...)
from fedsim.attacks.membership import family as _membership_family  # noqa: F401  (the membership family)
from fedsim.attacks.membership import plugins as _membership  # noqa: F401  (registers mia_*)

__all__ = ["ATTACKS", "Attack", "MembershipAttack", "MembershipTarget", "Observation", "Reconstruction",
           "ReconstructionAttack", "ThreatModel"]
