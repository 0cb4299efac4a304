"""Steganography in the low mantissa bits of float32 weights (Song, Ristenpart and Shmatikov's LSB
encoding, CCS 2017): the low `k` bits of each weight, taken in sorted-name order, carry a bit
string. A weight changes by at most 2^(k-23) of its own magnitude, so the network still works
for small `k`; half precision or a check of the low bits' statistics removes or finds the payload."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MANTISSA_BITS = 23


def carriers(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The entries that carry bits: every float32 entry, in sorted-name order (both sides know it)."""
    import torch

    return sorted(k for k, v in tensors.items() if v.dtype == torch.float32)


def capacity(tensors: dict[str, torch.Tensor], k: int) -> int:
    """Bits the low `k` mantissa bits of `tensors`' float32 entries hold."""
    return sum(tensors[n].numel() for n in carriers(tensors)) * k


def to_bits(values: torch.Tensor, nbits: int) -> torch.Tensor:
    """Non-negative integers -> their `nbits`-bit binary digits (most significant first), flat bool."""
    import torch

    shifts = torch.arange(nbits - 1, -1, -1, dtype=torch.int64)
    return ((values.reshape(-1, 1).to(torch.int64) >> shifts) & 1).bool().reshape(-1)


def from_bits(bits: torch.Tensor, nbits: int) -> torch.Tensor:
    """Inverse of `to_bits`: a flat bool tensor (length a multiple of nbits) -> int64 values."""
    import torch

    weights = 1 << torch.arange(nbits - 1, -1, -1, dtype=torch.int64)
    return (bits.reshape(-1, nbits).to(torch.int64) * weights).sum(1)


def embed(tensors: dict[str, torch.Tensor], payload: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """`tensors` with `payload` (flat bool) written into the low `k` bits of their float32 entries,
    from the first carrier on; the bits after the payload stay as they were."""
    import torch

    if not 1 <= k <= MANTISSA_BITS:
        raise ValueError(f"bits per weight must be in 1..{MANTISSA_BITS}, got {k}")
    if len(payload) > capacity(tensors, k):
        raise ValueError(f"a payload of {len(payload)} bits does not fit in {capacity(tensors, k)}")
    padded = torch.cat([payload.bool(), torch.zeros((-len(payload)) % k, dtype=torch.bool)])
    chunks = from_bits(padded, k).to(torch.int32)  # one k-bit value per weight
    out, used = dict(tensors), 0
    for name in carriers(tensors):
        if used == len(chunks):
            break
        flat = tensors[name].detach().contiguous().reshape(-1).view(torch.int32).clone()
        n = min(len(flat), len(chunks) - used)
        flat[:n] = (flat[:n] & ~((1 << k) - 1)) | chunks[used:used + n]
        out[name] = flat.view(torch.float32).reshape(tensors[name].shape)
        used += n
    return out


def read(tensors: dict[str, torch.Tensor], n_bits: int, k: int) -> torch.Tensor:
    """The first `n_bits` bits written by `embed` (flat bool)."""
    import torch

    if n_bits > capacity(tensors, k):
        raise ValueError(f"the export's low bits hold {capacity(tensors, k)} bits, not the {n_bits} asked for")
    weights = -(-n_bits // k)
    flat = torch.cat([tensors[n].detach().contiguous().reshape(-1).view(torch.int32) for n in carriers(tensors)])
    low = (flat[:weights] & ((1 << k) - 1)).to(torch.int64)
    return to_bits(low, k)[:n_bits]



def lattice_capacity(tensors: dict[str, torch.Tensor], repeat: int) -> int:
    """Bits the lattice hiding holds: one per float32 weight, each written `repeat` times."""
    return sum(tensors[n].numel() for n in carriers(tensors)) // repeat


def embed_lattice(tensors: dict[str, torch.Tensor], payload: torch.Tensor, step: float, repeat: int, *,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """`tensors` with `payload` (flat bool) in the float32 weights by quantisation-index modulation:
    a weight carrying bit b moves to the nearest point of step * Z + b * step / 2, so that noise of
    std well below step / 4 leaves the nearest half-step's parity, the bit, intact. Bit i is written
    to weights i, i + m, i + 2m, ... (m the bits the weights hold at `repeat` copies: the copies are
    spread over the network, and any prefix of the payload can be read alone) and read by a
    majority vote; the other weights stay as they were. Each moved weight is then dithered by
    uniform noise of +-step / 64 (`seed`): a lattice point's exact value has structured low mantissa
    bits that the low-bit test would see, while the dither costs the margin only 1/16 of itself."""
    import torch

    n, room = len(payload), lattice_capacity(tensors, repeat)
    if n > room:
        raise ValueError(f"a payload of {n} bits x {repeat} copies does not fit in {room * repeat} weights")
    names = carriers(tensors)
    flat = torch.cat([tensors[k].detach().reshape(-1) for k in names]).double()
    at = _copies(n, room, repeat)
    bits = payload.bool().repeat(repeat).double()
    dither = (torch.rand(len(at), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5) * step / 32
    flat[at] = step * torch.round((flat[at] - bits * step / 2) / step) + bits * step / 2 + dither
    out, at = dict(tensors), 0
    for k in names:
        size = tensors[k].numel()
        out[k] = flat[at:at + size].float().reshape(tensors[k].shape)
        at += size
    return out


def read_lattice(tensors: dict[str, torch.Tensor], n_bits: int, step: float, repeat: int) -> torch.Tensor:
    """The first `n_bits` bits written by `embed_lattice` (flat bool), each by majority of its copies."""
    import torch

    room = lattice_capacity(tensors, repeat)
    if n_bits > room:
        raise ValueError(f"the export's weights hold {room} bits at {repeat} copies, not the {n_bits} asked for")
    flat = torch.cat([tensors[k].detach().reshape(-1) for k in carriers(tensors)]).double()
    parity = torch.remainder(torch.round(flat[_copies(n_bits, room, repeat)] / (step / 2)), 2)
    return parity.reshape(repeat, n_bits).mean(0) > 0.5


def _copies(n_bits: int, room: int, repeat: int) -> torch.Tensor:
    """Positions of the copies of bits 0..n_bits-1, copy by copy: bit i's k-th copy is weight i + k * room."""
    import torch

    return (torch.arange(repeat)[:, None] * room + torch.arange(n_bits)[None]).reshape(-1)
