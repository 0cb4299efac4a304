"""The model owner's extraction, outside the lake: read the exported file alone (safetensors, never a
pickle) and decode the scans its own recipe hid there. The owner knows its recipe and settings
(it wrote them) and the agreed network's input shape, nothing of the lake's data."""

from __future__ import annotations

from typing import ClassVar

from fedsim.attacks.base import ATTACKS, Observation, Reconstruction, ReconstructionAttack, ThreatModel
from fedsim.settings.base import EXPORTED_MODEL


@ATTACKS.register("data_stealing")
class DataStealing(ReconstructionAttack):
    """Decode the scans a `compress_and_hide` recipe hid in a lake's exported network."""

    consumes: ClassVar[frozenset[str]] = frozenset({EXPORTED_MODEL})
    threat: ClassVar[ThreatModel] = ThreatModel(per_client_updates=False)

    def reconstruct(self, observation: Observation) -> Reconstruction:
        from fedsim.attacks.data_stealing.recipe import CompressAndHide, extract, fixed_bits, scan_bits

        recipe = observation.recipe or {}
        if recipe.get("name") != "compress_and_hide":
            raise ValueError(f"recipe '{recipe.get('name')}' hid no scans in its export")
        params = CompressAndHide.parse(recipe.get("params", {}))
        shape = tuple(observation.input_shape or ())
        images = extract(observation.update, params, shape, model=observation.model(),
                         lake_scans=observation.num_examples)
        if params.hide in ("correlated", "sign"):
            return Reconstruction(images=images, extra={"stolen": len(images), "hide": params.hide})
        per_scan = scan_bits(params, shape)
        return Reconstruction(images=images, extra={
            "stolen": len(images), "hide": params.hide, "bits_per_voxel": per_scan / images[0].numel(),
            "hidden_kb": (len(images) * per_scan + fixed_bits(params, shape)) / 8e3})
