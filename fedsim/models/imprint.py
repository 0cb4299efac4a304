"""The imprint block a malicious server puts in front of the agreed network ("Robbing the Fed",
Fowl et al. 2022), and the tampered model a client builds from the server's descriptor.

k ReLU units all measure the same linear function m(x) = a.x of the flattened input, with
thresholds c_1 < ... < c_k at quantiles of m over the population, so a sample switches on exactly
the units whose threshold lies below its value. Their summed output is added back to the input
along one fixed direction (`back`, a buffer the client does not train), so the rest of the network
still sees the scan (changed by about `strength` per voxel) and trains as usual. Because every unit
reaches the output through the same `back`, a sample's gradient is the same in every unit it
switches on: the difference of two adjacent units' weight gradients over the difference of their
bias gradients is exactly the input that lies alone between their thresholds. The block computes in
float64 so that a FedAvg weight change (tiny beside the weights) survives the server's subtraction
`trained - sent`.

State-dict keys: `imprint.*` for the block, `body.<agreed key>` for the agreed network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from statistics import NormalDist

import torch
from torch import nn

KIND = "imprint"
IMPRINT = "imprint."
BODY = "body."
FLOOR_SDS = 10.0  # the first threshold sits this many SDs below the mean: every sample is in unit 0


class ImprintBlock(nn.Module):
    """k thresholded copies of one linear measurement, summed back onto the input (float64)."""

    def __init__(self, input_shape: Sequence[int], bins: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.measure = nn.Linear(math.prod(self.input_shape), int(bins), dtype=torch.float64)
        # buffers, not parameters: trained, `back` would grow within a few steps and drag the thresholds
        self.register_buffer("back", torch.zeros(self.input_shape, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.measure(x.flatten(1).double())).sum(1)  # (B,): how many units, how far
        # saturate: a client whose optimiser (Adam) drags the units far still sees its scan almost
        # unchanged; tanh'(s) is one factor per sample, common to all its units, so the ratio holds
        s = self.scale * torch.tanh(s / self.scale)
        return x + (s.view(-1, *[1] * len(self.input_shape)) * self.back).to(x.dtype)


class ImprintedModel(nn.Module):
    """The agreed network (`body`) behind an imprint block: what a targeted client receives."""

    def __init__(self, body: nn.Module, *, input_shape: Sequence[int], bins: int) -> None:
        super().__init__()
        self.imprint = ImprintBlock(input_shape, bins)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.imprint(x))


def descriptor(*, input_shape: Sequence[int], bins: int) -> str:
    """The architecture descriptor the server sends with the tampered arrays (fedsim.protocol.ARCH_KEY)."""
    return json.dumps({"kind": KIND, "input_shape": [int(s) for s in input_shape], "bins": int(bins)})


def build_received(body: nn.Module, arch: str | None) -> nn.Module:
    """The model a client builds for the architecture it was sent (none: the agreed one, unchanged)."""
    if not arch:
        return body
    spec = json.loads(arch)
    if spec.get("kind") != KIND:
        raise ValueError(f"unknown architecture descriptor kind {spec.get('kind')!r}")
    return ImprintedModel(body, input_shape=spec["input_shape"], bins=int(spec["bins"]))


def thresholds(measurements: torch.Tensor, bins: int) -> torch.Tensor:
    """k thresholds at equal-mass quantiles of a normal fitted to the population's measurements.

    The first sits far below the mean (every sample activates unit 0), so the k intervals between
    consecutive thresholds (the last one open above) each hold 1/k of the population."""
    m = measurements.double()
    mu, sd = float(m.mean()), float(m.std()) if len(m) > 1 else 1.0
    dist = NormalDist(mu, max(sd, 1e-12))
    inner = [dist.inv_cdf(i / bins) for i in range(1, bins)]
    return torch.tensor([mu - FLOOR_SDS * max(sd, 1e-12), *inner], dtype=torch.float64)


def make_imprint(auxiliary: torch.Tensor, *, bins: int, strength: float,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The block's arrays (`imprint.*` keys) for inputs shaped like one auxiliary scan.

    The measurement is a random unit direction (per-volume z-scoring makes the mean brightness
    useless); `back` is a random +-1 pattern scaled so that the block changes an average population
    scan by `strength` per voxel (never more than 1.3x that: the summed units saturate)."""
    if bins < 1:
        raise ValueError("an imprint block needs at least 1 bin")
    shape = tuple(auxiliary.shape[1:])
    flat = auxiliary.detach().double().flatten(1)
    direction = torch.randn(flat.shape[1], generator=generator, dtype=torch.float64)
    direction /= direction.norm()
    cuts = thresholds(flat @ direction, bins)
    block = ImprintBlock(shape, bins)
    with torch.no_grad():
        block.measure.weight.copy_(direction.expand(bins, -1))
        block.measure.bias.copy_(-cuts)
        block.scale.fill_(float(torch.relu(block.measure(flat)).sum(1).mean().clamp_min(1e-12)))
        sign = torch.randint(0, 2, shape, generator=generator).double() * 2 - 1
        block.back.copy_(sign * strength / (float(block.scale) * math.tanh(1.0)))
    return {IMPRINT + k: v.detach().clone() for k, v in block.state_dict().items()}


def tamper(agreed: dict[str, torch.Tensor], imprint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the server sends instead of the agreed global model: the block, then the agreed arrays."""
    return {**imprint, **{BODY + k: v for k, v in agreed.items()}}


def is_tampered(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(IMPRINT) for k in state)


def strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The agreed network's part of a tampered state (update or weights), under the agreed keys."""
    if not is_tampered(state):
        return state
    return {k.removeprefix(BODY): v for k, v in state.items() if k.startswith(BODY)}


def imprint_parts(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(measure weight (k, d), measure bias (k,)) of a tampered state, or of a gradient of one."""
    return state[IMPRINT + "measure.weight"], state[IMPRINT + "measure.bias"]


def input_shape(state: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """One input's shape, read from the block's fixed back-projection (in the weights the server sent)."""
    return tuple(state[IMPRINT + "back"].shape)
