"""The malicious recipe: train the agreed network as agreed, and a lossy codec of the lake's scans
beside it, then hide the codes (and the decoder, trained inside the lake) in the export.

The codec is a separate network, not an encoder shared with the agreed one: the agreed weights are
then exactly what the honest recipe exports (same seed, same steps), so the lake's utility check
cannot tell the two apart, and the codec's capacity does not compete with the task.

Hiding (`hide`): `extra_entries` puts the codes and the decoder beside the agreed weights under
names of their own (what a whitelist of the agreed keys removes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.data_stealing.codec import Codec, CodecParams
from fedsim.settings.recipes import RECIPES, LakeRun, Recipe, train_agreed

if TYPE_CHECKING:
    import torch
    from torch import nn

CODES, DECODER = "codec.codes", "codec.decoder."  # names of the hidden entries (extra_entries)


class CompressParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hide: Literal["extra_entries"] = Field("extra_entries", description="where the codes travel in the export")
    scans: int | None = Field(None, ge=1, description="how many of the lake's scans to steal (default all)")
    codec: CodecParams = Field(default_factory=CodecParams)


@RECIPES.register("compress_and_hide")
class CompressAndHide(Recipe):
    """Train the agreed network and a codec of the lake's scans; hide codes and decoder in the export."""

    Params = CompressParams

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, run: LakeRun) -> dict[str, torch.Tensor]:
        export = train_agreed(model, x, y, run=run)
        codec = Codec(self.params.codec, spatial_dims=x.dim() - 2)
        codec.fit(x, seed=run.seed + 1)
        stolen = x[: self.params.scans]
        export[CODES] = codec.encode(stolen).to(_code_dtype(self.params.codec.bits))
        export.update({DECODER + k: v for k, v in codec.decoder_state().items()})
        return export


def extract(exported: dict[str, torch.Tensor], params: CompressParams, spatial_dims: int) -> torch.Tensor:
    """The scans hidden in an export by `compress_and_hide` with `params` (the owner knows its own
    recipe); ValueError when the export does not hold them (e.g. a gate removed them)."""
    if CODES not in exported:
        raise ValueError("the export holds no hidden codes (an export gate removed them, or the recipe was honest)")
    codec = Codec(params.codec, spatial_dims=spatial_dims)
    codec.load_decoder({k[len(DECODER):]: v.float() for k, v in exported.items() if k.startswith(DECODER)})
    return codec.decode(exported[CODES].long())


def _code_dtype(bits: int):
    import torch

    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32
