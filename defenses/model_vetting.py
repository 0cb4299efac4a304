"""Model vetting: a client checks the model it receives before training on it, and refuses a tampered one.

A server that changes the model (an imprint block in front of the network, "Robbing the Fed"; scaled
or planted weights) recovers inputs exactly, which no update defense can undo once the client has
trained. So the client compares what it received with what was agreed at enrolment: a hash of the
architecture (parameter and buffer names, shapes and dtypes, module types) and per-tensor weight
norms within a tolerance band of the last global model it accepted (of a freshly initialised agreed
model in its first round). On a mismatch it raises, so its reply is an error the server records
(`client_error` in metrics.jsonl, the report's Failures section) and the server learns nothing.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from fedsim.defenses.base import DEFENSES, ClientRound, Defense
from fedsim.plugin import NoParams

if TYPE_CHECKING:
    import torch
    from torch import nn

NORM = "norm."


class TamperedModelError(RuntimeError):
    """The received model is not the agreed one; the client refuses to train it this round."""


class VettingParams(NoParams):
    enrolment: Literal["scenario", "none"] | None = Field(
        "scenario", description="what was agreed at enrolment: 'scenario' = the scenario's task model")
    check_norms: bool = Field(True, description="also compare per-tensor weight norms with the last accepted model")
    rel_tol: float = Field(1.0, gt=0, description="allowed relative change of a tensor's norm per round")
    abs_tol: float = Field(0.5, ge=0, description="plus this much per element (RMS), for tensors that start at 0")


def architecture(model: nn.Module) -> list[str]:
    """The parts of a model's architecture a client can check: module types and tensor names, shapes, dtypes."""
    modules = [f"{name}:{type(m).__name__}" for name, m in model.named_modules()]
    tensors = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in model.state_dict().items()]
    return modules + tensors


def architecture_hash(model: nn.Module) -> str:
    return hashlib.sha256("\n".join(architecture(model)).encode()).hexdigest()


def norms(model: nn.Module) -> dict[str, float]:
    return {k: float(v.detach().double().norm()) for k, v in model.state_dict().items() if v.is_floating_point()}


def _agreed(ctx: ClientRound) -> nn.Module:
    """The enrolment reference: the scenario's task model, built without touching the training RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ctx.task.build_model()


def _nested_under(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> str | None:
    """The prefix under which every agreed tensor appears in `got`, if the agreed network was wrapped."""
    first = next(iter(want), None)
    for key in got:
        if first is not None and key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + k in got for k in want):
                return prefix
    return None


def _listing(keys: list[str], shapes: dict[str, torch.Tensor], limit: int = 3) -> str:
    shown = ", ".join(f"{k} {'x'.join(map(str, shapes[k].shape)) or 'scalar'}" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@DEFENSES.register("model_vetting")
class ModelVetting(Defense):
    """Refuse to train a model whose architecture differs from the enrolment agreement, or whose
    weights jumped outside a tolerance band of the last accepted global model."""

    Params: ClassVar[type[BaseModel]] = VettingParams
    once: ClassVar[bool] = True

    @classmethod
    def check_scenario(cls, params: BaseModel, scenario: Any) -> None:
        if params.enrolment in (None, "none"):  # type: ignore[attr-defined]
            raise ValueError("params.enrolment: no architecture was enrolled, so there is nothing to vet the "
                             "received model against; use 'scenario' (the task's model)")

    def inspect_model(self, model: nn.Module, *, config: dict[str, Any], ctx: ClientRound) -> None:
        import torch

        agreed = _agreed(ctx)
        self._check_architecture(model, agreed)
        received = norms(model)
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise TamperedModelError(f"model_vetting: refused round {ctx.server_round}: non-finite weights in "
                                     f"{', '.join(bad[:3])}")
        if self.params.check_norms:
            self._check_norms(model, received, agreed, ctx)
        ctx.state.update({NORM + k: v for k, v in received.items()})  # next round's reference

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        return {"model_vetted": 1.0}  # reached only when the received model passed

    def _check_architecture(self, model: nn.Module, agreed: nn.Module) -> None:
        if architecture_hash(model) == architecture_hash(agreed):
            return
        got, want = model.state_dict(), agreed.state_dict()
        details = []
        nested = _nested_under(got, want)
        if nested is not None:  # the agreed network wrapped inside a bigger one (an imprint block in front)
            inner = {k: got[nested + k] for k in want}
            got = {k: v for k, v in got.items() if not (k.startswith(nested) and k[len(nested):] in want)} | inner
            details.append(f"the agreed network is nested under '{nested}'")
        extra, missing = [k for k in got if k not in want], [k for k in want if k not in got]
        changed = [k for k in got if k in want and (got[k].shape, got[k].dtype) != (want[k].shape, want[k].dtype)]
        if extra:
            details.append(f"{len(extra)} unexpected tensors ({_listing(extra, got)})")
        if missing:
            details.append(f"{len(missing)} missing ({_listing(missing, want)})")
        if changed:
            details.append(f"{len(changed)} reshaped ({_listing(changed, got)})")
        raise TamperedModelError(
            f"model_vetting: refused: the received architecture (hash {architecture_hash(model)[:12]}) differs "
            f"from the one agreed at enrolment ({architecture_hash(agreed)[:12]}): "
            + ("; ".join(details) or "different module types"))

    def _check_norms(self, model: nn.Module, received: dict[str, float], agreed: nn.Module, ctx: ClientRound) -> None:
        previous = {k.removeprefix(NORM): v for k, v in ctx.state.items() if k.startswith(NORM)}
        reference = previous or norms(agreed)
        sizes = {k: v.numel() for k, v in model.state_dict().items()}
        out = [k for k, n in received.items() if k in reference
               and abs(n - reference[k]) > self.params.rel_tol * reference[k]
               + self.params.abs_tol * math.sqrt(sizes[k])]
        if out:
            k = out[0]
            raise TamperedModelError(
                f"model_vetting: refused: {len(out)} weight tensors moved outside the tolerance band of "
                f"{'the last accepted global model' if previous else 'the enrolled initial model'} "
                f"(e.g. {k}: norm {received[k]:.3g} vs {reference[k]:.3g})")
