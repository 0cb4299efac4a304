"""The malicious recipe: train the agreed network as agreed, and a lossy codec of the lake's scans
beside it, then hide the codes (and the decoder, trained inside the lake) in the export.

The codec is a separate network, not an encoder shared with the agreed one: the agreed weights are
then exactly what the honest recipe exports (same seed, same steps), so the lake's utility check
cannot tell the two apart, and the codec's capacity does not compete with the task.

Hiding (`hide`):
- `extra_entries`: the codes and the decoder beside the agreed weights, under names of their own
  (what a whitelist of the agreed keys removes);
- `mantissa`: a bit string in the low `bits_per_weight` mantissa bits of the agreed float32
  weights (stego.py): a 32-bit marker and scan count, the decoder in half precision, then the codes
  of as many scans as fit. Only the agreed entries leave, with their agreed shapes and dtypes.
- `correlated` / `sign`: no codec; a term added to the agreed network's own training loss makes its
  parameters carry the scans (encodings.py): at a utility cost, but past any check of entries or bits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.data_stealing import encodings, stego
from fedsim.attacks.data_stealing.codec import Codec, CodecParams, VoxelCodec, make_codec
from fedsim.settings.recipes import RECIPES, LakeRun, Recipe, train_agreed

if TYPE_CHECKING:
    import torch
    from torch import nn

CODES, DECODER = "codec.codes", "codec.decoder."  # names of the hidden entries (extra_entries)
COUNT_BITS, HALF_BITS = 32, 16
MARKER = 0x5EC0DE55  # opens the payload: the owner knows an intact one from weights' own low bits


class CompressParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hide: Literal["extra_entries", "mantissa", "correlated", "sign"] = Field(
        "extra_entries", description="where the scans travel")
    bits_per_weight: int = Field(8, ge=1, le=stego.MANTISSA_BITS, description="mantissa: low bits of each "
                                 "float32 weight overwritten")
    scans: int | None = Field(None, ge=1, description="how many of the lake's scans to steal (default: all, "
                              "or as many as the mantissa bits hold)")
    codec: CodecParams = Field(default_factory=CodecParams)
    weight: float = Field(1.0, gt=0, description="correlated / sign: the encoding term's weight in the loss")
    sign_bits: int = Field(4, ge=1, le=8, description="sign: bits per voxel (one parameter's sign each)")


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
        if self.params.hide == "mantissa" and fitting_scans(self.params, model.state_dict(), input_shape) < 1:
            need = fixed_bits(self.params, input_shape) + scan_bits(self.params, input_shape)
            raise ValueError(f"params.bits_per_weight: the agreed network's low {self.params.bits_per_weight} bits "
                             f"hold {stego.capacity(model.state_dict(), self.params.bits_per_weight)} bits, fewer "
                             f"than the decoder and one scan need ({need})")

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, run: LakeRun) -> dict[str, torch.Tensor]:
        p = self.params
        if p.hide in ("correlated", "sign"):
            n = encoded_scans(p, model, tuple(x.shape[1:]), len(x))
            hook = encodings.EncodingHook(encodings.secret(x[:n], p.hide, p.sign_bits), p.hide, p.weight)
            return train_agreed(model, x, y, run=run, hooks=[hook])
        export = train_agreed(model, x, y, run=run)
        codec = make_codec(p.codec, spatial_dims=x.dim() - 2)
        codec.fit(x, seed=run.seed + 1)
        n = min(len(x), p.scans or len(x))
        if p.hide == "extra_entries":
            export[CODES] = codec.encode(x[:n]).to(_code_dtype(p.codec.bits))
            export.update({DECODER + k: v for k, v in codec.decoder_state().items()})
            return export
        n = min(n, fitting_scans(p, export, tuple(x.shape[1:])))
        return stego.embed(export, _payload(codec, codec.encode(x[:n])), p.bits_per_weight)


def encoded_scans(params: CompressParams, model: nn.Module, input_shape: tuple[int, ...], lake_scans: int) -> int:
    """How many of a lake's scans the parameters carry (correlated / sign encodings)."""
    room = encodings.capacity(model, math.prod(input_shape), params.sign_bits if params.hide == "sign" else 1)
    return min(room, lake_scans, params.scans or lake_scans)


def _payload(codec: Codec | VoxelCodec, codes: torch.Tensor) -> torch.Tensor:
    """The bit string hidden in the mantissas: scan count, decoder (half precision), codes."""
    import torch

    halves = [v.detach().half().contiguous().view(torch.int16).reshape(-1).to(torch.int64) & 0xFFFF
              for _, v in sorted(codec.decoder_state().items())]
    return torch.cat([stego.to_bits(torch.tensor([MARKER, len(codes)]), COUNT_BITS),
                      *(stego.to_bits(h, HALF_BITS) for h in halves), stego.to_bits(codes, codec.params.bits)])


def fixed_bits(params: CompressParams, input_shape: tuple[int, ...]) -> int:
    shapes = make_codec(params.codec, spatial_dims=len(input_shape) - 1).decoder_shapes(input_shape)
    return 2 * COUNT_BITS + HALF_BITS * sum(math.prod(s) for s in shapes.values())


def scan_bits(params: CompressParams, input_shape: tuple[int, ...]) -> int:
    shape = make_codec(params.codec, spatial_dims=len(input_shape) - 1).code_shape(input_shape)
    return math.prod(shape) * params.codec.bits


def fitting_scans(params: CompressParams, tensors: dict[str, torch.Tensor], input_shape: tuple[int, ...]) -> int:
    """How many scans' codes the mantissa bits hold beside the count and the decoder."""
    room = stego.capacity(tensors, params.bits_per_weight) - fixed_bits(params, input_shape)
    return max(0, room // scan_bits(params, input_shape))


def extract(exported: dict[str, torch.Tensor], params: CompressParams, input_shape: tuple[int, ...], *,
            model: nn.Module | None = None, lake_scans: int = 0) -> torch.Tensor:
    """The scans of `input_shape` (C, *spatial) hidden in an export by `compress_and_hide` with
    `params` (the owner knows its own recipe; for the encodings, also the agreed `model` and how many
    scans the lake trained on); ValueError when the export does not hold them."""
    if params.hide in ("correlated", "sign"):
        if model is None:
            raise ValueError("decoding the weights needs the agreed architecture")
        n = encoded_scans(params, model, input_shape, lake_scans)
        return encodings.decode(exported, encodings.parameter_names(model), n, input_shape, params.hide,
                                params.sign_bits)
    codec = make_codec(params.codec, spatial_dims=len(input_shape) - 1)
    if params.hide == "extra_entries":
        if CODES not in exported:
            raise ValueError("the export holds no hidden codes (an export gate removed them, or the recipe was honest)")
        codec.load_decoder({k[len(DECODER):]: v.float() for k, v in exported.items() if k.startswith(DECODER)})
        return codec.decode(exported[CODES].long())
    return _extract_mantissa(exported, params, codec, input_shape)


def _extract_mantissa(exported: dict[str, torch.Tensor], params: CompressParams, codec: Codec | VoxelCodec,
                      input_shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    k = params.bits_per_weight
    if not stego.carriers(exported):
        raise ValueError("the export has no float32 weights (an export gate changed their precision)")
    marker, n = (int(v) for v in stego.from_bits(stego.read(exported, 2 * COUNT_BITS, k), COUNT_BITS))
    room = fitting_scans(params, exported, input_shape)
    if marker != MARKER or not 1 <= n <= room:
        raise ValueError("the low mantissa bits hold no payload (an export gate changed them, or none was hidden)")
    bits = stego.read(exported, fixed_bits(params, input_shape) + n * scan_bits(params, input_shape), k)
    at, state = 2 * COUNT_BITS, {}
    for name, shape in codec.decoder_shapes(input_shape).items():
        size = math.prod(shape) * HALF_BITS
        values = stego.from_bits(bits[at:at + size], HALF_BITS).to(torch.int16)  # wraps to the int16 bit pattern
        state[name] = values.view(torch.float16).float().reshape(shape)
        at += size
    codec.load_decoder(state)
    return codec.decode(stego.from_bits(bits[at:], params.codec.bits).reshape(n, *codec.code_shape(input_shape)))



def _code_dtype(bits: int):
    import torch

    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32
