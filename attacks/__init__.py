"""Attack plug-ins (the `attacks:` list of a scenario). Built-in attacks register on import."""

from attacks.base import ATTACKS, Attack, Observation, Reconstruction, ThreatModel
from attacks.gradient_inversion import plugins as _gradient_inversion  # noqa: F401  (registers dlg, ...)

__all__ = ["ATTACKS", "Attack", "Observation", "Reconstruction", "ThreatModel"]
