"""The lossy codecs a malicious recipe fits to a lake's scans (`codec.kind`).

`autoencoder`: a MONAI AutoEncoder of each scan's
difference from the lake's mean scan (the template, which leaves with the decoder), whose latent
codes are bounded and quantised to `bits` per value, so that the codes are what leaves the lake
and the decoder (trained inside) rebuilds the scans outside. Coding the difference starts the codec
at the population prior instead of at a blank image. Quantisation is simulated in training by
uniform noise of one step (a standard stand-in for rounding that keeps gradients); a rate term
(`rate` x the codes' length in bits per voxel under a learned Laplace prior) trades fidelity for
codes that an entropy coder (`entropy: lzma`) makes shorter.

`voxels`: no network; each voxel's difference from the template, quantised to `bits` (what Song et
al.'s LSB attack hides: the rate-quality reference for the learned codec).

`trained` (the seed's two scenarios): `inside`, the codec is fitted to the lake's scans and its
decoder (with the lake's mean scan) must leave with the codes; `outside`, the owner fits it to scans
of its own before the lakes run (its template is the owner's population mean), ships the codec in
with the recipe (the lake uses its encoder) and keeps a copy for decoding, so only the codes leave."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

LATENT_RANGE = 4.0  # codes are tanh-bounded to +-LATENT_RANGE before quantisation
TEMPLATE = "template"  # the decoder's entry holding the lake's mean scan
RANGE = "range"  # voxels: the clipping range of the differences


class CodecParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["autoencoder", "voxels"] = "autoencoder"
    trained: Literal["inside", "outside"] = Field("inside", description="fitted to the lake's scans inside it (the "
                                                  "decoder leaves too), or to the owner's own scans outside "
                                                  "(only codes leave)")
    owner_scans: int = Field(200, ge=2, le=100_000, description="trained outside: the owner's scans it fits on")
    entropy: Literal["none", "lzma"] = Field("none", description="lzma: each scan's codes leave compressed "
                                             "(more scans fit, as many as their entropy allows)")
    rate: float = Field(0.0, ge=0, description="autoencoder: weight of the rate term (the codes' bits per voxel "
                        "under a learned Laplace prior) against the squared error: shorter codes after entropy coding")
    channels: tuple[int, ...] = Field((32,), min_length=1, max_length=4,
                                      description="encoder channels; each level halves every side")
    latent_channels: int = Field(4, ge=1, le=64, description="code channels at the coarsest level")
    res_units: int = Field(0, ge=0, le=4, description="residual units per level (MONAI num_res_units)")
    bits: int = Field(8, ge=1, le=16, description="bits per code value (voxels: per voxel)")
    epochs: int = Field(50, ge=1, le=5000, description="passes of the codec over the lake's scans")
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(8, ge=1)


class Codec:
    """Encoder + decoder of one spatial size; `encode` gives integer codes, `decode` scans."""

    def __init__(self, params: CodecParams, spatial_dims: int) -> None:
        from monai.networks.nets import AutoEncoder

        self.params = params
        self.net = AutoEncoder(spatial_dims=spatial_dims, in_channels=1, out_channels=1,
                               channels=(*params.channels, params.latent_channels),
                               strides=(*(2 for _ in params.channels), 1), num_res_units=params.res_units,
                               norm="instance", act="PRELU")
        self.template: torch.Tensor | None = None  # the lake's mean scan, set by `fit`

    @property
    def levels(self) -> int:
        return 2**self.params.bits - 1

    def _bounded(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.tanh(self.net.encode(x - self.template) / LATENT_RANGE)  # in (-1, 1)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.template + self.net.decode(self.net.intermediate(z * LATENT_RANGE))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes in 0..2^bits-1 (int32), one block per scan."""
        import torch

        with torch.no_grad():
            return torch.round((self._bounded(x) + 1) / 2 * self.levels).to(torch.int32)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self._decode(codes.float() / self.levels * 2 - 1)

    def fit(self, x: torch.Tensor, *, seed: int) -> float:
        """Train on the scans `x` (N, 1, *spatial); returns the last epoch's mean loss (the squared
        error, plus the rate term when `rate` > 0)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        p = self.params
        self.template = x.mean(0, keepdim=True)
        log_scale = torch.zeros(p.latent_channels, requires_grad=True)  # the rate term's Laplace scale, per channel
        optimizer = torch.optim.Adam([*self.net.parameters(), log_scale], lr=p.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p.epochs)
        self.net.train()
        loss_sum = 0.0
        for _ in range(p.epochs):
            loss_sum = 0.0
            for rows in torch.randperm(len(x), generator=gen).split(p.batch_size):
                z = self._bounded(x[rows])
                step = 2 / self.levels
                noisy = z + (torch.rand(z.shape, generator=gen) - 0.5) * step  # rounding, simulated
                loss = torch.nn.functional.mse_loss(self._decode(noisy), x[rows])
                if p.rate:
                    loss = loss + p.rate * _laplace_bits(noisy / step, log_scale).sum() / x[rows].numel()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(rows)
            schedule.step()
        self.net.eval()
        return loss_sum / len(x)

    def decoder_state(self) -> dict[str, torch.Tensor]:
        """The decoder's weights (what must leave the lake when the codec was trained inside)."""
        out = {k: v.detach().clone() for k, v in self.net.state_dict().items() if not k.startswith("encode.")}
        return {**out, TEMPLATE: self.template.clone()}

    def decoder_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Names and shapes of `decoder_state` for scans of `input_shape` (C, *spatial), sorted by name."""
        shapes = {k: tuple(v.shape) for k, v in self.net.state_dict().items() if not k.startswith("encode.")}
        return dict(sorted({**shapes, TEMPLATE: (1, *input_shape)}.items()))

    def code_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The codes of one scan of `input_shape` (C, *spatial): latent channels x each side / 2^levels."""
        down = 2 ** len(self.params.channels)
        return (self.params.latent_channels, *(side // down for side in input_shape[1:]))

    def state(self) -> dict[str, torch.Tensor]:
        """Encoder, decoder and template: the whole codec (what a codec trained outside ships and keeps)."""
        return {**{k: v.detach().clone() for k, v in self.net.state_dict().items()}, TEMPLATE: self.template.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in [*self.net.state_dict(), TEMPLATE] if k not in state]
        if missing:
            raise ValueError(f"the owner's codec lacks {missing[0]} (and {len(missing) - 1} more)")
        self.load_decoder(state)
        self.net.load_state_dict({k: v for k, v in state.items() if k != TEMPLATE})
        self.net.eval()

    def load_decoder(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in [*self.net.state_dict(), TEMPLATE] if not k.startswith("encode.") and k not in state]
        if missing:
            raise ValueError(f"the export lacks the decoder's {missing[0]} (and {len(missing) - 1} more)")
        self.template = state[TEMPLATE]
        self.net.load_state_dict({**self.net.state_dict(), **{k: v for k, v in state.items() if k != TEMPLATE}})
        self.net.eval()



def _laplace_bits(z: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Code length in bits of latents `z` (in quantisation steps, (B, C, ...)) rounded to integers,
    under a zero-mean Laplace of scale 10 exp(log_scale[c]) steps per channel (starting at 10): the rate term of learned
    compression (Balle et al.), differentiable through the uniform-noise stand-in for rounding."""
    import torch

    scale = log_scale.exp().reshape(1, -1, *[1] * (z.dim() - 2)) * 10

    def cdf(v: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.5 * torch.sign(v) * (1 - torch.exp(-v.abs() / scale))

    return -torch.log2((cdf(z + 0.5) - cdf(z - 0.5)).clamp(min=1e-9))


class VoxelCodec:
    """Each voxel's difference from the lake's mean scan, clipped to the 99.9th percentile of their
    sizes and quantised uniformly to `bits`; `decoder_state` is the template and the range."""

    def __init__(self, params: CodecParams, spatial_dims: int) -> None:
        self.params, self.spatial_dims = params, spatial_dims
        self.template: torch.Tensor | None = None
        self.range: torch.Tensor | None = None

    @property
    def levels(self) -> int:
        return 2**self.params.bits - 1

    def fit(self, x: torch.Tensor, *, seed: int) -> float:
        import torch

        self.template = x.mean(0, keepdim=True)
        diff = (x - self.template).abs().flatten()
        sample = diff[torch.randperm(len(diff), generator=torch.Generator().manual_seed(seed))[:1_000_000]]
        self.range = torch.quantile(sample, 0.999).reshape(1).clamp(min=1e-6)
        return float(((self.decode(self.encode(x)) - x) ** 2).mean())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        r = self.range
        return torch.round(((x - self.template).clamp(-r, r) + r) / (2 * r) * self.levels).to(torch.int32)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.template + codes.float() / self.levels * 2 * self.range - self.range

    def decoder_state(self) -> dict[str, torch.Tensor]:
        return {TEMPLATE: self.template.clone(), RANGE: self.range.clone()}

    def decoder_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return dict(sorted({TEMPLATE: (1, *input_shape), RANGE: (1,)}.items()))

    def code_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def state(self) -> dict[str, torch.Tensor]:
        return self.decoder_state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in (TEMPLATE, RANGE) if k not in state]
        if missing:
            raise ValueError(f"the owner's codec lacks {missing[0]}")
        self.load_decoder(state)

    def load_decoder(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in (TEMPLATE, RANGE) if k not in state]
        if missing:
            raise ValueError(f"the export lacks the decoder's {missing[0]}")
        self.template, self.range = state[TEMPLATE], state[RANGE].reshape(1)


def make_codec(params: CodecParams, spatial_dims: int) -> Codec | VoxelCodec:
    return VoxelCodec(params, spatial_dims) if params.kind == "voxels" else Codec(params, spatial_dims)
