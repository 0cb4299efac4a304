"""The analytic imprint attack: exact inputs from the gradient of a server-planted imprint block.

A malicious server sends targeted clients the agreed network behind an imprint block
(`fedsim.models.imprint`, behaviour `imprint`). Unit i of the block is on for every sample whose
measurement exceeds threshold c_i, and a sample's gradient is the same in every unit it switches
on, so unit i's weight gradient is sum_j g_j x_j and its bias gradient sum_j g_j over the samples
above c_i. Between two adjacent thresholds the differences leave one sample's g_j x_j and g_j:
their ratio is x_j, exact to float precision, whatever the loss, the label or the network behind.
A bin holding two or more samples gives their weighted mean instead.

The same holds for a FedAvg weight change after several local SGD steps (momentum included): each
step adds -lr * gradient, so the ratio of the summed changes is still x_j while the sample stays in
its bin. It degrades as more distinct images share the bins (batch x steps against the bin count).
Adam rescales every weight separately and breaks the ratio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack, ThreatModel

if TYPE_CHECKING:
    import torch

NOISE_ULPS = 64  # a bias change below this many float64 ulps of the biases is rounding, not a sample

__all__ = ["ImprintAttack", "bin_differences", "recover_from_imprint"]


def bin_differences(weight_grad: torch.Tensor, bias_grad: torch.Tensor,
                    thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-interval sums (sum g_j x_j, sum g_j) from the cumulative per-unit gradients.

    Units are sorted by threshold; interval i lies between thresholds i and i+1 (the last one is
    open above), so its sums are unit i's minus unit i+1's."""
    import torch

    order = torch.argsort(thresholds)
    w, b = weight_grad[order].double(), bias_grad[order].double()
    dw = torch.cat([w[:-1] - w[1:], w[-1:]])
    db = torch.cat([b[:-1] - b[1:], b[-1:]])
    return dw, db


def recover_from_imprint(weight_grad: torch.Tensor, bias_grad: torch.Tensor, thresholds: torch.Tensor, *,
                         rel_tol: float = 1e-6, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (m, d), weights (m,)): one input per non-empty interval, the strongest first.

    An interval is empty when its bias-gradient difference is (numerically) zero: below `rel_tol`
    of the largest one, or below `floor` (rounding noise); `weights` are the kept |sum g_j|."""
    import torch

    dw, db = bin_differences(weight_grad, bias_grad, thresholds)
    scale = db.abs().max()
    if scale == 0:
        return dw[:0], db[:0]
    keep = (db.abs() > rel_tol * scale) & (db.abs() > floor)
    images, mass = dw[keep] / db[keep, None], db[keep].abs()
    order = torch.argsort(mass, descending=True)
    return images[order], mass[order]


class ImprintParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rel_tol: float = Field(1e-6, gt=0, lt=1, description="intervals whose bias change is below this fraction "
                           "of the largest one count as empty")


@ATTACKS.register("imprint")
class ImprintAttack(ReconstructionAttack):
    """Robbing the Fed: read every input that falls alone in an imprint bin straight from the update.

    Needs the per-client update and the architecture (the server built the block), the client's
    batch size and steps (to know how many images to return; the learning rate cancels), no labels.
    Auxiliary scans only fill the places of images it could not separate (the population mean)."""

    threat: ClassVar[ThreatModel] = ThreatModel(hyperparameters=True, auxiliary=True)
    Params = ImprintParams

    def reconstruct(self, observation: Observation) -> Reconstruction:
        import torch

        from fedsim.models.imprint import imprint_parts, input_shape, is_tampered

        obs = observation
        if not is_tampered(obs.global_state):
            raise ValueError("no imprint block in the model this client received (add the 'imprint' behaviour)")
        sent_w, sent_b = imprint_parts(obs.global_state)
        shape = input_shape(obs.global_state)
        if obs.kind == "gradient":
            dw, db = imprint_parts(obs.update)
            floor = 0.0
        else:  # trained weights: the change is -lr x (sum of the steps' gradients); the lr cancels
            new_w, new_b = imprint_parts(obs.update)
            dw, db = new_w.double() - sent_w.double(), new_b.double() - sent_b.double()
            floor = NOISE_ULPS * torch.finfo(torch.float64).eps * float(sent_b.abs().max())  # rounding of b - b'
        found, mass = recover_from_imprint(dw, db, -sent_b.double(), rel_tol=self.params.rel_tol, floor=floor)
        n = max(obs.images_in_update(), 1)
        images = found[:n].float().reshape(-1, *shape)
        if len(images) < n:  # fewer non-empty bins than images: the rest are unknown, guess the prior
            fill = obs.auxiliary.mean(0) if obs.auxiliary is not None else torch.zeros(shape)
            images = torch.cat([images, fill.expand(n - len(images), *shape).to(images.dtype)])
        return Reconstruction(images=images.contiguous(), extra={
            "bins": int(sent_b.numel()), "nonempty_bins": int(len(found)), "images_expected": n})
