"""Data stealing, the owner's refinements: a codec trained outside the lakes (only codes leave),
entropy-coded codes and a rate term, and the lattice hiding that survives parameter noise at the
export; on 2D slices end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsim.attacks.data_stealing import payload, stego
from fedsim.attacks.data_stealing.codec import CodecParams, make_codec
from fedsim.attacks.data_stealing.recipe import CompressAndHide, CompressParams, extract
from fedsim.loading import validate_scenario
from fedsim.run_folder import OWNER_STATE, RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import tiny_scenario


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": 0.05 * torch.randn(40, 50, generator=gen), "b.bias": 0.05 * torch.randn(100, generator=gen),
            "steps": torch.tensor(3)}


def test_lattice_bits_survive_noise_a_tenth_of_the_step_and_not_noise_of_the_step():
    state, step = weights(), 0.02
    payload = torch.rand(300, generator=torch.Generator().manual_seed(1)) > 0.5
    hidden = stego.embed_lattice(state, payload, step, repeat=5)
    assert stego.lattice_capacity(state, 5) == 2100 // 5 and hidden["steps"] is state["steps"]
    moved = torch.cat([(hidden[k] - state[k]).abs().flatten() for k in ("a.weight", "b.bias")])
    assert float(moved.max()) <= step / 2 + step / 64 + 1e-7 and int((moved > 0).sum()) == 1500  # the copies
    from fedsim.defenses.export_gates import low_bit_pvalues

    assert min(low_bit_pvalues(hidden, bits=4, chunk=256)) > 1e-4  # dithered: the low bits look like training's
    assert torch.equal(stego.read_lattice(hidden, 300, step, 5), payload)
    assert torch.equal(stego.read_lattice(hidden, 64, step, 5), payload[:64])  # a prefix reads alone
    gen = torch.Generator().manual_seed(2)
    for sigma, at_most in ((step / 10, 0), (step, 0.3)):
        noisy = {k: v + sigma * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                 for k, v in hidden.items()}
        errors = float((stego.read_lattice(noisy, 300, step, 5) != payload).double().mean())
        assert (errors == 0) if at_most == 0 else errors > at_most  # noise of the step: near coin flips
    with pytest.raises(ValueError, match="does not fit"):
        stego.embed_lattice(state, torch.ones(500, dtype=torch.bool), step, repeat=5)


def test_a_codec_trained_outside_leaves_no_decoder_and_the_owner_needs_its_kept_copy():
    gen = torch.Generator().manual_seed(0)
    owner, lake = torch.randn(30, 1, 16, 16, generator=gen), torch.randn(6, 1, 16, 16, generator=gen)
    params = CompressParams(hide="lattice", lattice_step=0.02, repeat=3,
                            codec=CodecParams(kind="voxels", bits=4, trained="outside", owner_scans=30))
    recipe = CompressAndHide(**params.model_dump())
    kept = recipe.prepare(lambda n: owner[:n], seed=0)
    assert torch.equal(kept["template"], owner.mean(0, keepdim=True))  # the owner's population, not the lake's
    codec = make_codec(params.codec, spatial_dims=2)
    codec.load_state(kept)
    big = {"w": 0.05 * torch.randn(20_000, generator=gen)}  # 6,666 bits: 6 scans of 1,024 bits and the header
    assert payload.fitting_scans(params, big, (1, 16, 16)) == 6
    hidden = stego.embed_lattice(big, payload.build(params, codec, codec.encode(lake), []), 0.02, 3)
    stolen = extract(hidden, params, (1, 16, 16), owner_state=kept)
    torch.testing.assert_close(stolen, codec.decode(codec.encode(lake)))
    with pytest.raises(ValueError, match=r"trained outside, and the owner's kept state \(owner/state.safetensors\) "
                                         "is missing"):
        extract(hidden, params, (1, 16, 16))
    with pytest.raises(ValueError, match="the weights' lattice points hold no payload"):
        extract(big, params, (1, 16, 16), owner_state=kept)


@pytest.fixture(scope="module")
def brains() -> torch.Tensor:
    from fedsim.data.synthetic import CohortSpec, load_cohort
    from fedsim.tasks.brain_age import zscore_volumes

    cohort = load_cohort(CohortSpec(n_subjects=16, shape=16, n_sites=2, seed=1))
    return torch.from_numpy(zscore_volumes(cohort.images))[:, None]


def test_entropy_coded_codes_fit_more_scans_and_come_back_exactly(brains):
    plain = CompressParams(hide="mantissa", codec=CodecParams(kind="voxels", bits=5, trained="outside"))
    packed_params = CompressParams(hide="mantissa", codec=CodecParams(kind="voxels", bits=5, trained="outside",
                                                                      entropy="lzma"))
    codec = make_codec(plain.codec, spatial_dims=3)
    codec.fit(brains, seed=0)
    codes, shape = codec.encode(brains), (1, 16, 16, 16)
    state = {"w": 0.05 * torch.randn(20_000, generator=torch.Generator().manual_seed(0))}  # 160,000 low bits
    room = payload.room_bits(plain, state) - payload.fixed_bits(plain, shape)
    sizes, packed = payload.scan_sizes(packed_params, codes)
    assert payload.scan_sizes(plain, codes)[0] == [5 * 4096] * 16 and max(sizes) < 0.8 * 5 * 4096
    n_plain, n = payload.how_many_fit(room, [5 * 4096] * 16), payload.how_many_fit(room, sizes)
    assert n_plain == 7 and n_plain < n < 16
    bits = payload.build(packed_params, codec, codes[:n], packed[:n])
    stolen = extract(stego.embed(state, bits, 8), packed_params, shape, owner_state=codec.state())
    torch.testing.assert_close(stolen, codec.decode(codes[:n]))
    bits[-200] = ~bits[-200]  # one bit of the last scan's bytes: lzma's check finds it
    with pytest.raises(ValueError, match="the hidden codes do not decompress"):
        extract(stego.embed(state, bits, 8), packed_params, shape, owner_state=codec.state())


def test_a_rate_term_makes_the_autoencoders_codes_shorter_after_entropy_coding(brains):
    from fedsim.attacks.metrics import mse

    found, errors = [], []
    for rate in (0.0, 0.3):  # 0.3: a bit per voxel is worth 0.3 of squared error in z-score units
        params = CompressParams(codec=CodecParams(channels=(8,), latent_channels=2, epochs=150, rate=rate,
                                                  entropy="lzma", batch_size=2))
        torch.manual_seed(0)
        codec = make_codec(params.codec, spatial_dims=3)
        codec.fit(brains[:4], seed=0)
        codes = codec.encode(brains[:4])
        found.append(sum(payload.scan_sizes(params, codes)[0]))
        errors.append(float(mse(codec.decode(codes), brains[:4]).mean()))
    prior = float(mse(brains[:4].mean(0, keepdim=True).expand(4, -1, -1, -1, -1), brains[:4]).mean())
    assert found[1] < 0.8 * found[0]
    assert errors[0] < errors[1] < 0.75 * prior  # shorter codes for some fidelity, still better than the mean


def lake_2d(params: dict, defenses: list | None = None) -> dict:
    return tiny_scenario(
        setting="data_lake", data={"n_subjects": 40, "shape": 32}, defenses=defenses or [],
        task={"name": "segmentation_slice", "model": {"name": "unet", "channels": [16, 32, 64], "norm": "instance"}},
        data_lake={"epochs": 2, "recipe": {"name": "compress_and_hide", "params": params}},
        attacks=[{"name": "data_stealing", "params": {"train_on_stolen": True, "epochs": 2, "eval_scans": 8}}])


@pytest.mark.e2e
def test_on_2d_slices_noise_at_the_export_erases_the_mantissa_payload_and_not_the_lattice_one(tmp_path: Path):
    noise = [{"name": "export_whitelist"}, {"name": "export_noise", "params": {"sigma": 0.0015}}]
    outside = {"kind": "voxels", "bits": 5, "trained": "outside", "owner_scans": 20}
    found = {}
    for hide, extra in (("mantissa", {"bits_per_weight": 8}), ("lattice", {"lattice_step": 0.02, "repeat": 3})):
        result = run_scenario(validate_scenario(lake_2d({"hide": hide, "codec": outside, **extra}, noise)),
                              out_dir=tmp_path / hide, log=lambda _: None)
        assert result.error is None and all(not e["refused"] for e in result.summary["exports"])
        found[hide] = result
    assert all(r["status"] == "error" and "hold no payload" in r["error"]
               for r in found["mantissa"].summary["attacks"])
    rows = found["lattice"].summary["attacks"]
    assert all(r["status"] == "ok" for r in rows), rows
    # 47,968 weights / 3 copies: 3 slices of 32^2 at 5 bits beside the header; the noise changed no bit
    assert all(r["stolen"] == 3 and r["psnr"] > 35 and r["reid_top1"] == 1 and r["ms_ssim"] > 0.99 for r in rows)
    assert all(0 < r["stolen_trained_dice"] <= 1 for r in rows)
    run = RunFolder(found["lattice"].run_dir)
    assert (run.path / OWNER_STATE).is_file()  # the codec the owner kept; the export holds no decoder
    assert all(k.startswith("net.") for k in run.observations()[0].update())
    report = run.report_file.read_text()
    assert "SSIM (MS-SSIM)" in report and "Prepared by the owner outside the lakes" in report


@pytest.mark.parametrize(("params", "message"), [
    ({"hide": "lattice", "repeat": 4}, r"data_lake\.recipe\.params\.repeat: 4 copies can tie; use an odd number"),
    ({"hide": "lattice", "repeat": 1, "codec": {"kind": "voxels", "trained": "outside", "entropy": "lzma"}},
     r"data_lake\.recipe\.params\.repeat: lzma with a lattice needs 3 copies or more"),
    ({"hide": "correlated", "codec": {"trained": "outside"}}, r"data_lake\.recipe\.params\.codec\.trained: hide "
     "correlated uses no codec"),
    ({"hide": "lattice", "repeat": 99, "codec": {"kind": "voxels", "trained": "outside"}},
     r"data_lake\.recipe\.params\.repeat: the agreed network's weights at 99 copies a bit hold \d+ bits, fewer than "
     r"one scan need \(8512\)"),
])
def test_hiding_that_cannot_work_is_refused_before_training(tmp_path: Path, params, message):
    with pytest.raises(ScenarioError, match=message):
        run_scenario(validate_scenario(lake_2d(params)), out_dir=tmp_path, log=lambda _: None)


def test_a_recipe_whose_preparation_fails_ends_the_run_with_one_line_and_no_export(tmp_path: Path):
    recipe = tmp_path / "owner.py"
    recipe.write_text(
        "from fedsim.settings.recipes import Recipe, train_agreed\n\n"
        "class NoScans(Recipe):\n"
        "    def prepare(self, owner_scans, *, seed):\n"
        "        raise RuntimeError('the owner has no scans')\n\n"
        "    def train(self, model, x, y, *, run):\n"
        "        return train_agreed(model, x, y, run=run)\n")
    raw = lake_2d({})
    raw["data_lake"]["recipe"] = {"name": f"{recipe}:NoScans"}
    raw["attacks"] = []
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path / "run", log=lambda _: None)
    assert result.error == ("the recipe's preparation outside the lakes failed: RuntimeError: the owner has no scans")
    assert result.summary["exports"] == [] and not list((Path(result.run_dir) / "observations").glob("*"))


def test_a_lake_without_label_maps_is_refused_before_training(tmp_path: Path):
    """A real on-disk table (NIfTI files) whose site b has no label maps: that lake cannot train the
    agreed segmentation network, said in one line before any lake trains."""
    import nibabel as nib
    import numpy as np

    rng, rows = np.random.default_rng(0), ["path,age,site,label"]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    brain = (grid**2).sum(0) < 0.6
    for i in range(12):
        scan = (100 * brain + rng.normal(0, 5, brain.shape)).astype(np.float32)
        (tmp_path / "scans").mkdir(exist_ok=True)
        nib.Nifti1Image(scan, np.eye(4)).to_filename(tmp_path / "scans" / f"s{i}.nii.gz")
        label = ""
        if i % 2 == 0:  # site a is labelled
            nib.Nifti1Image(brain.astype(np.uint8), np.eye(4)).to_filename(tmp_path / "scans" / f"s{i}_seg.nii.gz")
            label = f"scans/s{i}_seg.nii.gz"
        rows.append(f"scans/s{i}.nii.gz,{40 + i},{'a' if i % 2 == 0 else 'b'},{label}")
    (tmp_path / "subjects.csv").write_text("\n".join(rows) + "\n")
    raw = tiny_scenario(setting="data_lake", data={"dataset": "nifti_csv", "path": str(tmp_path), "shape": 16},
                        task={"name": "segmentation", "model": {"name": "unet", "channels": [4, 8]}},
                        data_lake={"epochs": 1, "recipe": {"name": "train_agreed"}})
    with pytest.raises(ScenarioError, match=r"^data: lake 1 holds no labels for task 'segmentation' in its \d+ "
                                            "training scans"):
        run_scenario(validate_scenario(raw), out_dir=tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.safetensors"))
