"""The malicious recipe's settings (`data_lake.recipe.params` of `compress_and_hide`): shared by the
recipe, the payload layout and the owner's extraction."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsim.attacks.data_stealing.codec import CodecParams
from fedsim.attacks.data_stealing.stego import MANTISSA_BITS


class CompressParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hide: Literal["extra_entries", "mantissa", "lattice", "correlated", "sign"] = Field(
        "extra_entries", description="where the scans travel")
    bits_per_weight: int = Field(8, ge=1, le=MANTISSA_BITS, description="mantissa: low bits of each "
                                 "float32 weight overwritten")
    lattice_step: float = Field(0.02, gt=0, le=1, description="lattice: the step of each bit's lattice (noise "
                                "of std step / 16 flips about one copy in 16,000)")
    repeat: int = Field(5, ge=1, le=99, description="lattice: copies of every bit (odd: read by majority)")
    scans: int | None = Field(None, ge=1, description="how many of the lake's scans to steal (default: all, "
                              "or as many as the mantissa bits hold)")
    codec: CodecParams = Field(default_factory=CodecParams)
    weight: float = Field(1.0, gt=0, description="correlated / sign: the encoding term's weight in the loss")
    sign_bits: int = Field(4, ge=1, le=8, description="sign: bits per voxel (one parameter's sign each)")

    @field_validator("repeat")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"{v} copies can tie; use an odd number")
        return v
