"""Export gates: what a data lake does to a network before it leaves (setting `data_lake`).

Listed in the scenario's `defenses:` like any defense, they act only at the export point
(`at_export`), in the order listed: a whitelist of the agreed network's entries, a test of the
low mantissa bits, fine-tuning on the lake's own scans (the fine-tuning export protocol), Gaussian
noise on the exported parameters, reduced precision. A gate may remove, change or refuse (ExportRefused);
what it noticed goes to `ctx.flags` and into the run's summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fedsim.defenses.base import DEFENSES, Defense, ExportRefused, ExportRound

if TYPE_CHECKING:
    import torch

Tensors = dict[str, "torch.Tensor"]


class _Gate(Defense):
    at_export: ClassVar[bool] = True


class WhitelistParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    refuse: bool = Field(False, description="refuse an export with entries beyond the agreed network "
                         "(default: remove them and flag the export)")


@DEFENSES.register("export_whitelist")
class ExportWhitelist(_Gate):
    """Only the agreed network's entries leave, with their agreed shapes and dtypes."""

    Params = WhitelistParams

    def transform_export(self, tensors: Tensors, *, ctx: ExportRound) -> Tensors:
        extra = [k for k in tensors if k not in ctx.agreed]
        missing = [k for k in ctx.agreed if k not in tensors]
        if missing:
            raise ExportRefused(f"export_whitelist: the export lacks the agreed entry {missing[0]}")
        for k, (shape, dtype) in ctx.agreed.items():
            found = (tuple(tensors[k].shape), str(tensors[k].dtype))
            if found != (shape, dtype):
                raise ExportRefused(f"export_whitelist: {k} is {found[1]} {list(found[0])}, "
                                    f"agreed {dtype} {list(shape)}")
        if extra:
            named = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            if self.params.refuse:
                raise ExportRefused(f"export_whitelist: {len(extra)} entries beyond the agreed network ({named})")
            ctx.flags.append(f"export_whitelist: removed {len(extra)} entries beyond the agreed network ({named})")
        return {k: tensors[k] for k in ctx.agreed}


class NoiseParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: float = Field(gt=0, description="std of the Gaussian noise added to every floating-point entry")


@DEFENSES.register("export_noise")
class ExportNoise(_Gate):
    """Gaussian noise on every exported floating-point parameter (integer entries pass unchanged)."""

    Params = NoiseParams

    def transform_export(self, tensors: Tensors, *, ctx: ExportRound) -> Tensors:
        import torch

        gen = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        return {k: v + self.params.sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                if v.is_floating_point() else v for k, v in tensors.items()}


class PrecisionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float16", "bfloat16"] = "float16"


@DEFENSES.register("export_precision")
class ExportPrecision(_Gate):
    """Floating-point entries leave in half precision (what the low mantissa bits held is lost)."""

    Params = PrecisionParams

    def transform_export(self, tensors: Tensors, *, ctx: ExportRound) -> Tensors:
        import torch

        dtype = getattr(torch, self.params.dtype)
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


class BitTestParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(8, ge=1, le=12, description="low mantissa bits tested")
    chunk: int = Field(4096, ge=256, description="weights per tested run (a payload may fill only a few); "
                       "at least 5 x 2^bits, so that the chi-square approximation holds")
    alpha: float = Field(1e-6, gt=0, lt=1, description="false-alarm rate of one export (Bonferroni over runs)")
    refuse: bool = Field(True, description="refuse a flagged export (else flag it and let it leave)")

    @field_validator("chunk")
    @classmethod
    def _enough_per_cell(cls, v: int, info: ValidationInfo) -> int:
        bits = info.data.get("bits", 8)
        if v < 5 * 2**bits:
            raise ValueError(f"{v} weights give fewer than 5 per value of {bits} bits; use at least {5 * 2**bits}")
        return v


@DEFENSES.register("export_bit_test")
class ExportBitTest(_Gate):
    """A chi-square test of the low mantissa bits: in float32 weights that training moved their values
    are near uniform (a fresh initialisation's are not); bits written there (codes, a decoder) are
    not. Runs of `chunk` weights, taken in sorted-name order, are tested one by one; round values
    (untrained defaults such as 0, 1 or PReLU's 0.25) are skipped. An encrypted payload would pass:
    this catches the plain ones."""

    Params = BitTestParams

    def transform_export(self, tensors: Tensors, *, ctx: ExportRound) -> Tensors:
        p = self.params
        pvalues = low_bit_pvalues(tensors, bits=p.bits, chunk=p.chunk)
        worst = min(pvalues, default=1.0)
        if pvalues and worst < p.alpha / len(pvalues):
            flagged = sum(v < p.alpha / len(pvalues) for v in pvalues)
            note = (f"export_bit_test: the low {p.bits} mantissa bits of {flagged} of {len(pvalues)} runs of weights "
                    f"are not uniform (smallest p {worst:.1e})")
            if p.refuse:
                raise ExportRefused(note)
            ctx.flags.append(note)
        return tensors


def low_bit_pvalues(tensors: Tensors, *, bits: int, chunk: int) -> list[float]:
    """Chi-square p-values of uniformity of the low `bits` of float32 weights, one per run of
    `chunk` weights (sorted-name order; a short tail is not tested). Weights whose low 16 bits are
    all zero are skipped: round values (0, +-1, 0.25) are untrained defaults, not noise."""
    import torch
    from scipy.stats import chi2

    names = sorted(k for k, v in tensors.items() if v.dtype == torch.float32)
    if not names:
        return []
    flat = torch.cat([tensors[k].detach().reshape(-1) for k in names])
    flat = flat.contiguous().view(torch.int32)
    flat = flat[(flat & 0xFFFF) != 0]  # round values (0, +-1, PReLU's 0.25: untrained defaults) carry no noise
    low = (flat & ((1 << bits) - 1)).to(torch.int64)
    expected = chunk / 2**bits
    out = []
    for start in range(0, len(low) - chunk + 1, chunk):
        counts = torch.bincount(low[start:start + chunk], minlength=2**bits).double()
        stat = float(((counts - expected) ** 2 / expected).sum())
        out.append(float(chi2.sf(stat, 2**bits - 1)))
    return out


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(2, ge=1, le=100, description="epochs of fine-tuning on the lake's own scans")
    lr: float = Field(1e-3, gt=0, description="learning rate of the layers nearest the output")
    decay: float = Field(0.8, gt=0, le=1, description="each layer nearer the input trains at this times the "
                         "rate of the next (1: plain fine-tuning)")


@DEFENSES.register("export_finetune")
class ExportFinetune(_Gate):
    """The fine-tuning export protocol: before export the lake trains the agreed network a few epochs
    on its own scans (Adam, layer-wise decaying learning rate), so that every weight moves by more
    than what a payload in its low bits or small correlated changes could survive. Entries beyond
    the agreed network pass unchanged (the whitelist removes them)."""

    Params = FinetuneParams

    def transform_export(self, tensors: Tensors, *, ctx: ExportRound) -> Tensors:
        import numpy as np
        import torch

        from fedsim.training import batch_loader, run_steps
        from fedsim.training_plan import local_budget

        if ctx.data is None or ctx.config is None:
            raise ExportRefused("export_finetune: the lake has no data to fine-tune on")
        model = ctx.task.build_model()
        state = model.state_dict()
        missing = [k for k in state if k not in tensors]
        if missing:
            raise ExportRefused(f"export_finetune: the export lacks the agreed entry {missing[0]}")
        model.load_state_dict({k: tensors[k].to(v.dtype) for k, v in state.items()})
        x, y = ctx.data
        config = ctx.config.model_copy(update={"local_epochs": self.params.epochs, "local_steps": None})
        budget = local_budget(config, len(x))
        rng = np.random.default_rng(int(ctx.rng.integers(2**62)))
        run_steps(model, torch.optim.Adam(_layer_groups(model, self.params.lr, self.params.decay)),
                  batch_loader(x, y, budget.batch_size, rng), budget.steps, task=ctx.task)
        return {**tensors, **{k: v.detach().clone() for k, v in model.state_dict().items()}}


def _layer_groups(model, lr: float, decay: float) -> list[dict]:
    """One optimizer group per module holding parameters, in registration order (input to output):
    the last trains at `lr`, each earlier one at `decay` times the next."""
    modules: dict[str, list] = {}
    for name, param in model.named_parameters():
        modules.setdefault(name.rpartition(".")[0], []).append(param)
    n = len(modules)
    return [{"params": params, "lr": lr * decay ** (n - 1 - i)} for i, params in enumerate(modules.values())]
