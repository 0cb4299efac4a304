"""The bit string a malicious recipe hides in the agreed weights (`hide: mantissa` or `lattice`), and
how the owner reads it back from the exported file.

Layout: a 32-bit marker and the scan count; with `codec.entropy: lzma`, each scan's compressed
length in bytes (32 bits each); with `hide: lattice` these header fields are written
`HEADER_REPEAT` times over (one wrong bit there loses every scan); then the decoder in half
precision (a codec trained inside the lake only); then the codes: each scan's `codec.bits`-bit
values, or its lzma-compressed bytes (the entropy coder: codes a rate term made small take fewer
bytes, so more scans fit).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fedsim.attacks.data_stealing import stego
from fedsim.attacks.data_stealing.codec import Codec, VoxelCodec, make_codec

if TYPE_CHECKING:
    import torch

    from fedsim.attacks.data_stealing.params import CompressParams

FIELD_BITS, HALF_BITS = 32, 16  # every header field (marker, count, a scan's length); a half-precision value
HEADER_REPEAT = 5  # lattice: header fields have this many times the copies (one error loses every scan)
MARKER = 0x5EC0DE55  # opens the payload: the owner knows an intact one from weights' own low bits


def pack(codes: torch.Tensor, bits: int) -> bytes:
    """One scan's integer codes, lzma-compressed (bytes of uint8, or little-endian uint16 above 8 bits;
    the .xz format's integrity check lets the owner tell a damaged scan; ~60 bytes of framing)."""
    import lzma

    import numpy as np

    return lzma.compress(codes.numpy().astype(np.uint8 if bits <= 8 else "<u2").tobytes())


def unpack(data: bytes, shape: tuple[int, ...], bits: int) -> torch.Tensor:
    import lzma

    import numpy as np
    import torch

    values = np.frombuffer(lzma.decompress(data), dtype=np.uint8 if bits <= 8 else "<u2")
    return torch.from_numpy(values.astype(np.int64)).reshape(shape)


def unpack_all(data: bytes, lengths: list[int], shape: tuple[int, ...], bits: int) -> torch.Tensor:
    """Every scan's codes from their concatenated packed bytes; ValueError (one line) if damaged."""
    import torch

    cuts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    try:
        return torch.stack([unpack(data[a:b], shape, bits) for a, b in zip(cuts, cuts[1:], strict=False)])
    except Exception as exc:  # lzma's check or the shape: the bytes were changed
        raise ValueError(f"the hidden codes do not decompress ({type(exc).__name__}): an export gate changed "
                         "them") from None


def _repeat(params: CompressParams) -> int:
    return HEADER_REPEAT if params.hide == "lattice" else 1


def header_bits(params: CompressParams, n: int = 0) -> int:
    """The marker and count, and with an entropy coder `n` scans' lengths, as written."""
    lengths = n * FIELD_BITS if params.codec.entropy == "lzma" else 0
    return (2 * FIELD_BITS + lengths) * _repeat(params)


def fixed_bits(params: CompressParams, input_shape: tuple[int, ...]) -> int:
    """Bits before the first scan: the marker and count, and the decoder when it was trained inside."""
    if params.codec.trained == "outside":
        return header_bits(params)
    shapes = make_codec(params.codec, spatial_dims=len(input_shape) - 1).decoder_shapes(input_shape)
    return header_bits(params) + HALF_BITS * sum(math.prod(s) for s in shapes.values())


def scan_bits(params: CompressParams, input_shape: tuple[int, ...]) -> int:
    """One scan's codes before entropy coding (the bound the check before training uses)."""
    shape = make_codec(params.codec, spatial_dims=len(input_shape) - 1).code_shape(input_shape)
    return math.prod(shape) * params.codec.bits


def room_bits(params: CompressParams, tensors: dict[str, torch.Tensor]) -> int:
    """Bits the agreed weights carry for this hiding."""
    if params.hide == "lattice":
        return stego.lattice_capacity(tensors, params.repeat)
    return stego.capacity(tensors, params.bits_per_weight)


def fitting_scans(params: CompressParams, tensors: dict[str, torch.Tensor], input_shape: tuple[int, ...]) -> int:
    """How many scans fit beside the header and the decoder at their size before entropy coding."""
    per_scan = scan_bits(params, input_shape) + header_bits(params, 1) - header_bits(params)
    return max(0, (room_bits(params, tensors) - fixed_bits(params, input_shape)) // per_scan)


def scan_sizes(params: CompressParams, codes: torch.Tensor) -> tuple[list[int], list[bytes]]:
    """Bits each scan of `codes` takes in the payload (its length field included), and its packed bytes."""
    if params.codec.entropy != "lzma":
        return [codes[0].numel() * params.codec.bits] * len(codes), []
    packed = [pack(c, params.codec.bits) for c in codes]
    return [8 * len(b) + header_bits(params, 1) - header_bits(params) for b in packed], packed


def how_many_fit(room: int, sizes: list[int]) -> int:
    """The longest prefix of scans of `sizes` bits within `room` bits."""
    used, n = 0, 0
    for size in sizes:
        if used + size > room:
            break
        used, n = used + size, n + 1
    return n


def build(params: CompressParams, codec: Codec | VoxelCodec, codes: torch.Tensor, packed: list[bytes]) -> torch.Tensor:
    """The bit string (flat bool) of `codes` (and their `packed` bytes with an entropy coder)."""
    import torch

    if params.codec.entropy == "lzma" and len(packed) != len(codes):
        raise ValueError(f"{len(codes)} scans' codes but {len(packed)} packed")
    header = stego.to_bits(torch.tensor([MARKER, len(codes), *(len(b) for b in packed)]), FIELD_BITS)
    header = header.repeat_interleave(_repeat(params))
    decoder = codec.decoder_state() if params.codec.trained == "inside" else {}
    halves = [v.detach().half().contiguous().view(torch.int16).reshape(-1).to(torch.int64) & 0xFFFF
              for _, v in sorted(decoder.items())]
    body = (stego.to_bits(torch.frombuffer(bytearray(b"".join(packed)), dtype=torch.uint8), 8) if packed
            else stego.to_bits(codes, codec.params.bits))
    return torch.cat([header, *(stego.to_bits(h, HALF_BITS) for h in halves), body])


def _read(exported: dict[str, torch.Tensor], n_bits: int, params: CompressParams) -> torch.Tensor:
    if params.hide == "lattice":
        return stego.read_lattice(exported, n_bits, params.lattice_step, params.repeat)
    return stego.read(exported, n_bits, params.bits_per_weight)


def _header(exported: dict[str, torch.Tensor], params: CompressParams, fields: int) -> list[int]:
    bits = _read(exported, fields * FIELD_BITS * _repeat(params), params)
    if _repeat(params) > 1:
        bits = bits.reshape(-1, _repeat(params)).double().mean(1) > 0.5
    return [int(v) for v in stego.from_bits(bits, FIELD_BITS)]


def read(exported: dict[str, torch.Tensor], params: CompressParams, codec: Codec | VoxelCodec,
         input_shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    """The codes (n, *code shape) hidden in `exported`, and the payload's size in bits; loads a decoder
    trained inside into `codec`. ValueError when the weights hold no payload."""
    import torch

    if not stego.carriers(exported):
        raise ValueError("the export has no float32 weights (an export gate changed their precision)")
    marker, n = _header(exported, params, 2)
    room = room_bits(params, exported) - fixed_bits(params, input_shape)
    smallest = header_bits(params, 1) - header_bits(params) + 8 if params.codec.entropy == "lzma" else \
        scan_bits(params, input_shape)
    if marker != MARKER or not 1 <= n <= room // smallest:
        where = "low mantissa bits" if params.hide == "mantissa" else "weights' lattice points"
        raise ValueError(f"the {where} hold no payload (an export gate changed them, or none was hidden)")
    lengths = _header(exported, params, 2 + n)[2:] if params.codec.entropy == "lzma" else []
    body = 8 * sum(lengths) if lengths else n * scan_bits(params, input_shape)
    start = fixed_bits(params, input_shape) + header_bits(params, n) - header_bits(params)
    if body > room_bits(params, exported) - start:
        raise ValueError("the payload's lengths run past the weights (an export gate changed them)")
    bits = _read(exported, start + body, params)
    at = header_bits(params, n)
    if params.codec.trained == "inside":
        state = {}
        for name, shape in codec.decoder_shapes(input_shape).items():
            size = math.prod(shape) * HALF_BITS
            values = stego.from_bits(bits[at:at + size], HALF_BITS).to(torch.int16)  # wraps to the int16 pattern
            state[name] = values.view(torch.float16).float().reshape(shape)
            at += size
        codec.load_decoder(state)
    shape = codec.code_shape(input_shape)
    if not lengths:
        return stego.from_bits(bits[at:], params.codec.bits).reshape(n, *shape), start + body
    data = bytes(stego.from_bits(bits[at:], 8).to(torch.uint8).tolist())
    return unpack_all(data, lengths, shape, params.codec.bits), start + body
