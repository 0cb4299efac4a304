"""Find the strength at which a defense's utility matches a target (defenses are compared at matched
utility, never at a hand-picked strength): bisection on the log of a strength where larger is
stronger and utility falls as it grows."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Matched:
    strength: float
    utility: float
    result: Any  # whatever `evaluate` returned at that strength (e.g. the trained model)
    tried: list[tuple[float, float]]  # (strength, utility) of every evaluation, for curves


def match_utility(evaluate: Callable[[float], tuple[float, Any]], target: float, *, low: float, high: float,
                  tolerance: float = 0.01, iterations: int = 7) -> Matched:
    """The strength in [low, high] whose utility (evaluate(strength)[0]) is within `tolerance` of
    `target`, or the closest one tried. Utility is assumed to fall as strength grows; the strongest
    setting is tried first, and where even it keeps more utility than the target, it is the answer
    (the defense cannot cost that much: it is compared at its strongest, with more utility)."""
    utility, result = evaluate(high)
    tried: list[tuple[float, float, Any]] = [(high, utility, result)]
    if utility >= target - tolerance:
        return Matched(strength=high, utility=utility, result=result, tried=[(high, utility)])
    lo, hi = math.log(low), math.log(high)
    for _ in range(iterations):
        mid = math.exp((lo + hi) / 2)
        utility, result = evaluate(mid)
        tried.append((mid, utility, result))
        if abs(utility - target) <= tolerance:
            break
        if utility > target:  # still too useful: stronger
            lo = math.log(mid)
        else:
            hi = math.log(mid)
    strength, utility, result = min(tried, key=lambda t: abs(t[1] - target))
    return Matched(strength=strength, utility=utility, result=result, tried=[(s, u) for s, u, _ in tried])
