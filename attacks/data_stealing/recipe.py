"""The malicious recipe: train the agreed network as agreed, and a lossy codec of the lake's scans
beside it, then hide the codes (and the decoder, trained inside the lake) in the export.

The codec is a separate network, not an encoder shared with the agreed one: the agreed weights are
then exactly what the honest recipe exports (same seed, same steps), so the lake's utility check
cannot tell the two apart, and the codec's capacity does not compete with the task.

Hiding (`hide`):
- `extra_entries`: the codes and the decoder beside the agreed weights, under names of their own
  (what a whitelist of the agreed keys removes);
- `mantissa`: a bit string in the low `bits_per_weight` mantissa bits of the agreed float32
  weights (stego.py; layout in payload.py): a marker and scan count, the decoder in half precision
  (trained inside only), then the codes of as many scans as fit (entropy-coded with
  `codec.entropy`). Only the agreed entries leave, with their agreed shapes and dtypes.
- `lattice`: the same bit string in the weights' values rather than their low bits (stego.embed_lattice:
  each float32 weight rounded to one of two interleaved lattices of step `lattice_step`, the choice a
  bit, written `repeat` times): what an owner who expects parameter noise of std s at the export
  does (a copy flips with probability 2 Phi(-step / 4s): 1% at step = 10 s, 6e-5 at 16 s), at the
  cost of moving every carrying weight by up to step / 2 and of holding one bit per weight (the
  header `payload.HEADER_REPEAT` times more), so it steals fewer scans;
- `correlated` / `sign`: no codec; a term added to the agreed network's own training loss makes its
  parameters carry the scans (encodings.py): at a utility cost, but past any check of entries or bits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fedsim.attacks.data_stealing import encodings, payload, stego
from fedsim.attacks.data_stealing.codec import make_codec
from fedsim.attacks.data_stealing.params import CompressParams
from fedsim.attacks.data_stealing.payload import fitting_scans, fixed_bits, room_bits, scan_bits
from fedsim.settings.recipes import RECIPES, LakeRun, Recipe, train_agreed

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

BITS_IN_WEIGHTS = ("mantissa", "lattice")  # the codes travel as a bit string inside the agreed weights

CODES, DECODER = "codec.codes", "codec.decoder."  # names of the hidden entries (extra_entries)
LENGTHS = "codec.lengths"  # extra_entries with an entropy coder: each scan's compressed bytes


@RECIPES.register("compress_and_hide")
class CompressAndHide(Recipe):
    """Train the agreed network and a codec of the lake's scans; hide codes and decoder in the export."""

    Params = CompressParams

    def check(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        down = 2 ** len(self.params.codec.channels)
        if self.params.codec.kind == "autoencoder" and any(side % down for side in input_shape[1:]):
            raise ValueError(f"params.codec.channels: {len(self.params.codec.channels)} levels halve each side "
                             f"{len(self.params.codec.channels)} times; sides {list(input_shape[1:])} do not divide "
                             f"by {down}")
        if self.params.hide in ("correlated", "sign") and encoded_scans(self.params, model, input_shape, 1) < 1:
            per_voxel = f" x {self.params.sign_bits} bits" if self.params.hide == "sign" else ""
            raise ValueError(f"params.hide: the agreed network's {sum(p.numel() for p in model.parameters())} "
                             f"parameters hold no whole scan of {math.prod(input_shape)} voxels{per_voxel}")
        if self.params.hide in ("correlated", "sign") and self.params.codec.trained == "outside":
            raise ValueError(f"params.codec.trained: hide {self.params.hide} uses no codec")
        if self.params.hide == "lattice" and self.params.codec.entropy == "lzma" and self.params.repeat < 3:
            raise ValueError("params.repeat: lzma with a lattice needs 3 copies or more (one flipped bit loses a "
                             "whole compressed scan)")
        p, state = self.params, model.state_dict()
        if p.hide in BITS_IN_WEIGHTS and fitting_scans(p, state, input_shape) < 1:
            need = fixed_bits(p, input_shape) + scan_bits(p, input_shape)
            key, where = (("bits_per_weight", f"low {p.bits_per_weight} bits") if p.hide == "mantissa"
                          else ("repeat", f"weights at {p.repeat} copies a bit"))
            what = "the decoder and one scan" if p.codec.trained == "inside" else "one scan"
            raise ValueError(f"params.{key}: the agreed network's {where} hold {room_bits(p, state)} bits, fewer "
                             f"than {what} need ({need})")

    def prepare(self, owner_scans: Callable[[int], torch.Tensor], *, seed: int) -> dict[str, torch.Tensor]:
        """A codec trained outside: fitted to the owner's own scans; its encoder goes in with the code."""
        p = self.params
        if p.hide in ("correlated", "sign") or p.codec.trained == "inside":
            return {}
        scans = owner_scans(p.codec.owner_scans)
        codec = make_codec(p.codec, spatial_dims=scans.dim() - 2)
        codec.fit(scans, seed=seed)
        return codec.state()

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, run: LakeRun) -> dict[str, torch.Tensor]:
        p = self.params
        if p.hide in ("correlated", "sign"):
            n = encoded_scans(p, model, tuple(x.shape[1:]), len(x))
            hook = encodings.EncodingHook(encodings.secret(x[:n], p.hide, p.sign_bits), p.hide, p.weight)
            return train_agreed(model, x, y, run=run, hooks=[hook])
        export = train_agreed(model, x, y, run=run)
        codec = make_codec(p.codec, spatial_dims=x.dim() - 2)
        if p.codec.trained == "outside":
            codec.load_state(run.owner_state)
        else:
            codec.fit(x, seed=run.seed + 1)
        import torch

        codes = codec.encode(x[: p.scans or len(x)])
        if p.hide == "extra_entries":
            if p.codec.trained == "inside":
                export.update({DECODER + k: v for k, v in codec.decoder_state().items()})
            if p.codec.entropy == "lzma":
                packed = [payload.pack(c, p.codec.bits) for c in codes]
                export[LENGTHS] = torch.tensor([len(b) for b in packed])
                export[CODES] = torch.frombuffer(bytearray(b"".join(packed)), dtype=torch.uint8)
            else:
                export[CODES] = codes.to(_code_dtype(p.codec.bits))
            return export
        sizes, packed = payload.scan_sizes(p, codes)
        n = payload.how_many_fit(room_bits(p, export) - fixed_bits(p, tuple(x.shape[1:])), sizes)
        if n == 0:  # only with an entropy coder (the check before training sized the scans uncompressed)
            raise ValueError(f"params.codec.entropy: compressed, the smallest scan takes {min(sizes)} bits, more than "
                             f"the {room_bits(p, export) - fixed_bits(p, tuple(x.shape[1:]))} the weights hold")
        bits = payload.build(p, codec, codes[:n], packed[:n])
        if p.hide == "lattice":
            return stego.embed_lattice(export, bits, p.lattice_step, p.repeat, seed=run.seed + 2)
        return stego.embed(export, bits, p.bits_per_weight)


def encoded_scans(params: CompressParams, model: nn.Module, input_shape: tuple[int, ...], lake_scans: int) -> int:
    """How many of a lake's scans the parameters carry (correlated / sign encodings)."""
    room = encodings.capacity(model, math.prod(input_shape), params.sign_bits if params.hide == "sign" else 1)
    return min(room, lake_scans, params.scans or lake_scans)


def extract(exported: dict[str, torch.Tensor], params: CompressParams, input_shape: tuple[int, ...], *,
            model: nn.Module | None = None, lake_scans: int = 0,
            owner_state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The scans of `input_shape` (C, *spatial) hidden in an export by `compress_and_hide` with
    `params` (the owner knows its own recipe; for the encodings, also the agreed `model` and how many
    scans the lake trained on; for a codec trained outside, the `owner_state` it kept); ValueError
    when the export does not hold them."""
    return extract_sized(exported, params, input_shape, model=model, lake_scans=lake_scans,
                         owner_state=owner_state)[0]


def extract_sized(exported: dict[str, torch.Tensor], params: CompressParams, input_shape: tuple[int, ...], *,
                  model: nn.Module | None = None, lake_scans: int = 0,
                  owner_state: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, int | None]:
    """`extract`, and the payload's size in bits where it travels inside the weights (mantissa,
    lattice; else None)."""
    if params.hide in ("correlated", "sign"):
        if model is None:
            raise ValueError("decoding the weights needs the agreed architecture")
        n = encoded_scans(params, model, input_shape, lake_scans)
        return encodings.decode(exported, encodings.parameter_names(model), n, input_shape, params.hide,
                                params.sign_bits), None
    codec = make_codec(params.codec, spatial_dims=len(input_shape) - 1)
    if params.codec.trained == "outside":
        if not owner_state:
            raise ValueError("the codec was trained outside, and the owner's kept state (owner/state.safetensors) "
                             "is missing")
        codec.load_state(owner_state)
    if params.hide == "extra_entries":
        if CODES not in exported:
            raise ValueError("the export holds no hidden codes (an export gate removed them, or the recipe was honest)")
        if params.codec.trained == "inside":
            codec.load_decoder({k[len(DECODER):]: v.float() for k, v in exported.items() if k.startswith(DECODER)})
        if LENGTHS not in exported:
            return codec.decode(exported[CODES].long()), None
        return codec.decode(payload.unpack_all(bytes(exported[CODES].tolist()), exported[LENGTHS].tolist(),
                                               codec.code_shape(input_shape), params.codec.bits)), None
    codes, hidden = payload.read(exported, params, codec, input_shape)
    return codec.decode(codes), hidden


def _code_dtype(bits: int):
    import torch

    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32
