"""DP-SGD through Opacus: per-sample clipping and Gaussian noise in every local step of every client.

Opacus's PrivacyEngine wraps the client's model (per-sample gradients), optimizer (clip to
`max_grad_norm`, add N(0, (noise_multiplier * max_grad_norm)^2) to the summed clipped gradients,
divide by the expected batch size) and loader (Poisson sampling at rate 1 / batches-per-epoch).
The wrapped model trains the original parameters in place, so the client still sends the original
model's state_dict (no `_module.` keys).

Accounting is per client (record-level DP on its own data, across the whole federation): Flower
rebuilds clients every round, so the steps taken so far are kept in `ctx.state` and each round's
epsilon is recomputed with a fresh Opacus accountant from that history.

The noise is drawn from a torch.Generator seeded from the round's defense rng (reproducible runs);
Opacus's `secure_mode` stays off, so the simulated noise is NOT cryptographically secure.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fedsim.defenses.base import DEFENSES, ClientRound, Defense
from fedsim.training_plan import local_budget

if TYPE_CHECKING:  # Opacus and torch load where DP-SGD runs, not when a scenario is checked
    import torch
    from opacus import PrivacyEngine
    from opacus.optimizers import DPOptimizer
    from torch import nn
    from torch.utils.data import DataLoader

DEFAULT_DELTA = 1e-5


class DPSGDParams(BaseModel):
    """Exactly one of `noise_multiplier` / `target_epsilon`. With `noise_multiplier` alone, `delta`
    (for the reported epsilon) defaults to 1e-5; `target_epsilon` needs an explicit `delta`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noise_multiplier: float | None = Field(None, gt=0, description="noise std / max_grad_norm")
    target_epsilon: float | None = Field(None, gt=0, validate_default=True,
                                         description="budget for the whole federation, per client")
    delta: float | None = Field(None, gt=0, lt=1, validate_default=True,
                                description="default 1e-5 with noise_multiplier")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample clipping bound C")
    poisson_sampling: bool = True
    grad_sample_mode: Literal["hooks", "functorch", "ew"] = Field(
        "ew", description="ew (torch ExpandedWeights): fastest on our CNNs (benchmarks/dp_overhead.py); "
                          "hooks: Opacus's default, falls back to functorch for layers it does not know")
    accountant: Literal["rdp", "prv"] = "rdp"

    # field validators (not a model validator), so that errors name their key: params.target_epsilon: ...
    @field_validator("target_epsilon")
    @classmethod
    def _one_noise_source(cls, v: float | None, info: ValidationInfo) -> float | None:
        if "noise_multiplier" in info.data and (info.data["noise_multiplier"] is None) == (v is None):
            raise ValueError("set exactly one of noise_multiplier and target_epsilon")
        return v

    @field_validator("delta")
    @classmethod
    def _default_delta(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None and info.data.get("target_epsilon") is not None:
            raise ValueError("target_epsilon without delta; set delta (below 1 / records per client)")
        return DEFAULT_DELTA if v is None else v


@DEFENSES.register("dp_sgd")
class DPSGD(Defense):
    """Record-level DP-SGD on each client (Opacus). `target_epsilon` calibrates the noise so that
    `federation.rounds` rounds of `local_steps` (or `local_epochs` epochs) reach it, per client from its
    own data size (sample rate 1 / batches per epoch); a client that sits out rounds spends less."""

    Params: ClassVar[type[BaseModel]] = DPSGDParams
    once: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._engine: PrivacyEngine | None = None  # this round's engine, until round_metrics reads it

    @property
    def delta(self) -> float:
        return float(self.params.delta)

    @classmethod
    def check_scenario(cls, params: BaseModel, scenario: Any) -> None:
        """The server and every client train one architecture, so a layer Opacus cannot train
        privately (e.g. BatchNorm) must be replaced in the scenario, not in one client."""
        from opacus.validators import ModuleValidator
        from torch import nn

        from fedsim.tasks import TASKS

        model = TASKS.get(scenario.task.name)(config=scenario.task, target_mean=0.0, target_std=1.0,
                                             data=scenario.data).build_model()
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            found = "; ".join(dict.fromkeys(" ".join(str(e).split()).split(". ")[0] for e in errors))  # 1st sentences
            fix = ("set task.model.norm: group (or instance)" if any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                                   for m in model.modules())
                   else "change task.model so every client can use it")
            raise ValueError(f"Opacus cannot train this model privately ({found}); {fix}")
        fed = scenario.federation
        if fed.strategy == "fedprox" and float(fed.strategy_args.get("proximal_mu", 0.01)) > 0:
            raise ValueError("FedProx's proximal term has no per-sample gradient, so Opacus would drop it; "
                             "use another federation.strategy (or proximal_mu: 0)")

    def wrap_training(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *, ctx: ClientRound
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        import torch
        from opacus import PrivacyEngine

        p = self.params
        loader = _epoch_loader(loader)
        sample_rate = 1 / len(loader)  # Opacus's rate (expected batch = records / batches per epoch)
        sigma = p.noise_multiplier or self._calibrate(ctx, sample_rate, loader)
        device = next(model.parameters()).device
        noise_gen = torch.Generator(device=device).manual_seed(int(ctx.rng.integers(2**62)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # documented above
            engine = PrivacyEngine(accountant=p.accountant, secure_mode=False)
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=p.max_grad_norm, poisson_sampling=p.poisson_sampling,
            grad_sample_mode=p.grad_sample_mode, noise_generator=noise_gen)
        if p.poisson_sampling:  # Opacus would sample from torch's global rng; use the defense's seed
            loader.batch_sampler.generator = torch.Generator().manual_seed(int(ctx.rng.integers(2**62)))
        _allow_empty_batches(optimizer)
        self._engine = engine
        return model, optimizer, loader

    def simulated_sender(self, kind: str) -> Any:
        """One record's loss gradient in a FedSGD batch: clipped to `max_grad_norm`, plus the step's
        Gaussian noise, over the expected batch size. A multi-step update (noise in every step) and a
        noise calibrated from each client's data size (`target_epsilon`) are not followed."""
        p = self.params
        if kind != "gradient" or p.noise_multiplier is None:
            return None
        from fedsim.defenses.clip_update import clip_and_noise

        def send(update: dict[str, torch.Tensor], ctx: ClientRound) -> dict[str, torch.Tensor]:
            sent, _ = clip_and_noise(update, p.max_grad_norm, p.noise_multiplier, int(ctx.rng.integers(2**63)))
            return {k: v / ctx.config.batch_size for k, v in sent.items()}

        return send

    def _calibrate(self, ctx: ClientRound, sample_rate: float, loader: DataLoader) -> float:
        """The noise for which the federation's planned steps (all rounds of this round's local
        budget, at the batch size Opacus samples) spend `target_epsilon`."""
        size = getattr(loader.batch_sampler, "batch_size", None) or ctx.config.batch_size
        budget = local_budget(ctx.config, len(loader.dataset), batch_size=size)  # type: ignore[arg-type]
        steps = ctx.config.rounds * budget.steps
        return _noise_for(float(self.params.target_epsilon), self.delta, sample_rate, steps, self.params.accountant)

    def round_metrics(self, *, ctx: ClientRound) -> dict[str, float]:
        """Epsilon spent by this client so far: the steps Opacus's accountant counted this round are
        appended to the client's history, and the whole history goes through a fresh accountant."""
        if self._engine is not None:
            for sigma, rate, steps in self._engine.accountant.history:
                _record(ctx.state, float(sigma), float(rate), int(steps))
            self._engine = None
        history = _history(ctx.state)
        if not history:
            return {}
        return {"dp_epsilon": epsilon(history, self.delta, self.params.accountant), "dp_delta": self.delta,
                "dp_noise_multiplier": ctx.state["noise_multiplier"], "dp_steps": ctx.state["steps"]}


@functools.lru_cache(maxsize=64)
def _noise_for(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Opacus's binary search (about a second); cached, as a client asks the same every round."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")  # RDP's alpha-range hint
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant))


def epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` after the (noise_multiplier, sample_rate, steps) history, by Opacus."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")  # RDP's alpha-range hint
        return float(acc.get_epsilon(delta=delta))


def _history(state: dict[str, float]) -> list[tuple[float, float, int]]:
    return [(state[f"h{j}.noise_multiplier"], state[f"h{j}.sample_rate"], int(state[f"h{j}.steps"]))
            for j in range(int(state.get("segments", 0)))]


def _record(state: dict[str, float], sigma: float, rate: float, steps: int) -> None:
    """Append steps to the history kept in the flat float state (a new segment when the noise or
    the sample rate changed, e.g. in a round where the server asked for a different batch size)."""
    history = _history(state)
    if history and history[-1][:2] == (sigma, rate):
        history[-1] = (sigma, rate, history[-1][2] + steps)
    else:
        history.append((sigma, rate, steps))
    for j, (s, q, n) in enumerate(history):
        state.update({f"h{j}.noise_multiplier": s, f"h{j}.sample_rate": q, f"h{j}.steps": float(n)})
    state.update(segments=float(len(history)), steps=float(sum(n for *_, n in history)),
                 sample_rate=rate, noise_multiplier=sigma)


def _epoch_loader(loader: DataLoader) -> DataLoader:
    """Opacus samples at rate 1 / len(loader). A FedSGD request's one-batch loader would make that 1
    (the whole local set in one noisy step); give it an epoch of batch_size batches instead, so the
    client samples about the batch the server asked for (rate ~ batch_size / records)."""
    from torch.utils.data import DataLoader

    sampler, n = loader.batch_sampler, len(loader.dataset)  # type: ignore[arg-type]
    size = getattr(sampler, "batch_size", None) or loader.batch_size
    if not size or not hasattr(sampler, "batches") or len(loader) >= n // size:
        return loader
    sampler = copy.copy(sampler)
    sampler.batches = n // size
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn)


def _allow_empty_batches(optimizer: DPOptimizer) -> None:
    """Opacus expects a forward/backward even on an empty Poisson batch (it yields zero-size
    per-sample gradients); run_steps skips the model then and calls step() alone. Supply those
    zero-size gradients, so the step still adds noise and the accountant still counts it."""
    step = optimizer.step

    def step_allowing_empty(closure: Any = None) -> Any:
        if closure is None and all(getattr(p, "grad_sample", None) is None for p in optimizer.params):
            for param in optimizer.params:
                param.grad_sample = param.new_zeros((0, *param.shape))
        return step(closure)

    optimizer.step = step_allowing_empty  # type: ignore[method-assign]
