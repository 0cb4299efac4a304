"""Training-time augmentation (`federation.augment`): each training batch is flipped left-right,
shifted by a few voxels and jittered in intensity, scan by scan, with MONAI's dictionary
transforms, so that a label map (segmentation) moves with its image.

Why: a few hundred scans per hospital are memorised within a few epochs (training error far below
test error); random views of the same anatomy are what the brain-age literature trains on. Applied
to what the client trains on only: evaluation, the recorded ground truth and attacks' scoring see
the scans as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fedsim.scenario import AugmentConfig


class BatchAugment:
    """Random views of a batch (inputs (B, C, *spatial); targets of the same spatial shape are
    label maps and move with their image, any other targets are left alone), seeded."""

    def __init__(self, config: AugmentConfig, *, seed: int) -> None:
        self.config, self.seed = config, seed
        self._by_dims: dict[tuple[int, bool], object] = {}

    def _transform(self, spatial_dims: int, with_labels: bool) -> object:
        from monai.transforms import Compose, RandAffined, RandFlipd, RandScaleIntensityd, RandShiftIntensityd

        key = (spatial_dims, with_labels)
        if key not in self._by_dims:
            c = self.config
            keys = ["image", "label"] if with_labels else ["image"]
            steps = []
            if c.flip > 0:  # spatial axis 0 is left-right (MNI)
                steps.append(RandFlipd(keys=keys, prob=c.flip, spatial_axis=0))
            if c.shift > 0:
                steps.append(RandAffined(keys=keys, prob=1.0, translate_range=(c.shift,) * spatial_dims,
                                         mode=["bilinear", "nearest"][:len(keys)], padding_mode="border"))
            if c.intensity > 0:
                steps += [RandScaleIntensityd(keys="image", factors=c.intensity, prob=1.0),
                          RandShiftIntensityd(keys="image", offsets=c.intensity, prob=1.0)]
            transform = Compose(steps)
            transform.set_random_state(seed=self.seed % 2**32)
            self._by_dims[key] = transform
        return self._by_dims[key]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        with_labels = y.shape == x.shape
        transform = self._transform(x.dim() - 2, with_labels)
        xs, ys = [], []
        for i in range(len(x)):
            item = {"image": x[i], "label": y[i]} if with_labels else {"image": x[i]}
            out = transform(item)  # type: ignore[operator]
            xs.append(_plain(out["image"]).to(x.dtype))
            if with_labels:
                ys.append(_plain(out["label"]).round().to(y.dtype))
        return torch.stack(xs), (torch.stack(ys) if with_labels else y)


def _plain(value: object) -> torch.Tensor:
    """A MONAI MetaTensor (or array) as a plain tensor: the training loop and Opacus want no metadata."""
    import torch

    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)  # type: ignore[union-attr]
