"""Data stealing through exported networks (setting data_lake): the codec, the export gates, the
owner's extraction, and a lake run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.attacks.data_stealing.codec import Codec, CodecParams
from fedsim.attacks.data_stealing.recipe import CODES, DECODER, CompressParams, extract
from fedsim.attacks.metrics import mse
from fedsim.data.synthetic import CohortSpec, load_cohort
from fedsim.defenses.base import DEFENSES, ExportRefused, ExportRound
from fedsim.loading import validate_scenario
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from fedsim.tasks.brain_age import zscore_volumes
from tests.conftest import tiny_scenario

AGREED = {"conv.weight": torch.randn(4, 1, 3, 3, 3), "conv.bias": torch.randn(4)}


@pytest.fixture(scope="module")
def scans() -> torch.Tensor:
    cohort = load_cohort(CohortSpec(n_subjects=16, shape=16, n_sites=2, seed=1))
    return torch.from_numpy(zscore_volumes(cohort.images))[:, None]


def ctx() -> ExportRound:
    return ExportRound(lake=0, task=None, rng=np.random.default_rng(0),  # type: ignore[arg-type]
                       agreed={k: (tuple(v.shape), str(v.dtype)) for k, v in AGREED.items()})


def test_the_codec_rebuilds_its_scans_better_than_the_population_mean(scans):
    torch.manual_seed(0)
    codec = Codec(CodecParams(channels=(8,), latent_channels=4, epochs=40), spatial_dims=3)
    codec.fit(scans, seed=0)
    codes = codec.encode(scans)
    assert codes.dtype == torch.int32 and codes.min() >= 0 and codes.max() <= 255
    assert codes.shape == (16, 4, 8, 8, 8)  # one level: half of every side
    rebuilt = codec.decode(codes)
    assert rebuilt.shape == scans.shape
    assert float(mse(rebuilt, scans).mean()) < 0.75 * float(mse(scans.mean(0, keepdim=True).expand_as(scans),
                                                                 scans).mean())


def test_quantised_voxels_rebuild_a_scan_closer_with_every_bit(scans):
    from fedsim.attacks.data_stealing.codec import make_codec
    from fedsim.attacks.metrics import psnr

    found = []
    for bits in (3, 5, 7):
        codec = make_codec(CodecParams(kind="voxels", bits=bits), spatial_dims=3)
        codec.fit(scans, seed=0)
        codes = codec.encode(scans)
        assert codes.shape == scans.shape and int(codes.max()) < 2**bits
        found.append(float(psnr(codec.decode(codes), scans).mean()))
    assert found[0] + 8 < found[1] < found[2] - 8 and found[1] > 35  # ~6 dB a bit


def test_extraction_reads_the_export_alone(scans):
    params = CompressParams(codec=CodecParams(channels=(8,), latent_channels=4, epochs=3))
    codec = Codec(params.codec, spatial_dims=3)
    codec.fit(scans[:4], seed=0)
    export = {**AGREED, CODES: codec.encode(scans[:4]).to(torch.uint8),
              **{DECODER + k: v for k, v in codec.decoder_state().items()}}
    torch.testing.assert_close(extract(export, params, (1, 16, 16, 16)), codec.decode(codec.encode(scans[:4])))
    with pytest.raises(ValueError, match="no hidden codes"):
        extract(AGREED, params, (1, 16, 16, 16))
    with pytest.raises(ValueError, match="lacks the decoder"):
        extract({**AGREED, CODES: export[CODES]}, params, (1, 16, 16, 16))


def test_the_whitelist_lets_only_the_agreed_entries_leave():
    gate = DEFENSES.get("export_whitelist")()
    honest = ctx()
    assert gate.transform_export(dict(AGREED), ctx=honest).keys() == AGREED.keys() and not honest.flags
    found = ctx()
    out = gate.transform_export({**AGREED, CODES: torch.zeros(3, dtype=torch.uint8)}, ctx=found)
    assert out.keys() == AGREED.keys() and found.flags == ["export_whitelist: removed 1 entries beyond the "
                                                           "agreed network (codec.codes)"]
    with pytest.raises(ExportRefused, match="beyond the agreed network"):
        DEFENSES.get("export_whitelist")(refuse=True).transform_export({**AGREED, "x": torch.zeros(1)}, ctx=ctx())
    with pytest.raises(ExportRefused, match="lacks the agreed entry conv.bias"):
        gate.transform_export({"conv.weight": AGREED["conv.weight"]}, ctx=ctx())
    with pytest.raises(ExportRefused, match=r"conv.bias is torch.float16 \[4\], agreed torch.float32 \[4\]"):
        gate.transform_export({**AGREED, "conv.bias": AGREED["conv.bias"].half()}, ctx=ctx())


def test_noise_and_precision_gates_change_parameters_not_integer_codes():
    codes = torch.arange(10, dtype=torch.uint8)
    noisy = DEFENSES.get("export_noise")(sigma=0.1).transform_export({**AGREED, CODES: codes}, ctx=ctx())
    assert torch.equal(noisy[CODES], codes)
    assert 0.05 < float((noisy["conv.weight"] - AGREED["conv.weight"]).std()) < 0.2
    half = DEFENSES.get("export_precision")(dtype="bfloat16").transform_export({**AGREED, CODES: codes}, ctx=ctx())
    assert half["conv.weight"].dtype == torch.bfloat16 and half[CODES].dtype == torch.uint8


@pytest.mark.parametrize(("change", "message"), [
    ({"data_lake": {"recipe": {"name": "nope"}}}, "data_lake.recipe: unknown recipe 'nope'"),
    ({"data_lake": {"recipe": {"name": "compress_and_hide", "params": {"codec": {"bits": 0}}}}},
     "data_lake.recipe.params.codec.bits"),
    ({"defenses": [{"name": "dp_sgd", "params": {"noise_multiplier": 1.0}}]}, "defenses.0: dp_sgd is a client defense"),
    ({"defenses": [{"name": "export_noise", "params": {"sigma": 0}}]},
     "defenses.0: params.sigma: Input should be greater than 0"),
    ({"attacks": [{"name": "dlg"}]}, "attacks.0: dlg consumes gradient or weights observations"),
    ({"defenses": [{"name": "export_bit_test", "params": {"bits": 8, "chunk": 1024}}]},
     "defenses.0: params.chunk: 1024 weights give fewer than 5 per value of 8 bits; use at least 1280"),
    ({"defenses": [{"name": "export_whitelst"}]}, "defenses.0: unknown defense 'export_whitelst'"),
    ({"defenses": [{"name": "split_model_noise", "params": {"sigma": 0.1}}]},
     "defenses.0: split_model_noise defends split inference"),
])
def test_bad_lake_input_is_one_line_naming_the_key(change, message):
    raw = tiny_scenario(setting="data_lake",
                        task={"name": "segmentation", "model": {"name": "unet", "channels": [4, 8]}})
    raw.update(change)
    with pytest.raises(ScenarioError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_scenario(raw)


def test_an_export_gate_in_a_federation_is_refused():
    with pytest.raises(ScenarioError, match="defenses.0: export_whitelist is an export gate of a data lake"):
        validate_scenario(tiny_scenario(defenses=[{"name": "export_whitelist"}]))


def lake_scenario(recipe: dict, defenses: list | None = None) -> dict:
    return tiny_scenario(
        setting="data_lake", data={"n_subjects": 40}, defenses=defenses or [],
        task={"name": "segmentation", "model": {"name": "unet", "channels": [4, 8], "norm": "instance"}},
        data_lake={"epochs": 2, "recipe": recipe},
        attacks=[{"name": "data_stealing", "params": {"train_on_stolen": True, "epochs": 2, "eval_scans": 8}}])


@pytest.mark.e2e
def test_a_malicious_recipe_steals_the_lakes_scans_and_exports_the_honest_network(tmp_path: Path):
    malicious = {"name": "compress_and_hide", "params": {"codec": {"channels": [8], "latent_channels": 4,
                                                                   "epochs": 40}}}
    result = run_scenario(validate_scenario(lake_scenario(malicious)), out_dir=tmp_path / "bad", log=lambda _: None)
    assert result.error is None and not result.failures
    exports, rows = result.summary["exports"], result.summary["attacks"]
    assert len(exports) == 2 and all(e["extra_entries"] > 0 and not e["flags"] for e in exports)
    for e, row in zip(exports, rows, strict=True):
        assert row["status"] == "ok" and row["kind"] == "exported_model" and row["stolen"] == e["scans"]
        assert row["psnr_gain"] > 1.0 and row["reid_top1"] >= 0.5  # every scan of the lake, rebuilt
        # what the theft is worth: a network trained on the stolen scans alone, on the owner's scans
        assert 0 < row["stolen_trained_dice"] <= 1 and row["exported_dice"] > 0
    run = RunFolder(result.run_dir)
    report = run.report_file.read_text()
    assert "## Exports" in report and "What the stolen scans are worth" in report
    # the honest recipe through a whitelist and the low-bit test: nothing flagged, the very same agreed
    # weights and Dice
    gates = [{"name": "export_whitelist"}, {"name": "export_bit_test", "params": {"bits": 4, "chunk": 256}}]
    honest = run_scenario(validate_scenario(lake_scenario({"name": "train_agreed"}, gates)),
                          out_dir=tmp_path / "good", log=lambda _: None)
    assert not any(e["flags"] or e["refused"] for e in honest.summary["exports"])
    assert [r["status"] for r in honest.summary["attacks"]] == ["error", "error"]
    assert "hid no scans" in honest.summary["attacks"][0]["error"]
    good = RunFolder(honest.run_dir).observations()[0].update()
    bad = run.observations()[0].update()
    assert good.keys() < bad.keys() and all(torch.equal(good[k], bad[k]) for k in good)
    assert honest.summary["final"] == result.summary["final"]


def unet_state(seed: int = 0, *, trained: bool = False) -> dict[str, torch.Tensor]:
    """A UNet's weights; `trained`: each moved by a relative 1e-4, as any float32 training step moves
    it (a fresh initialisation's low bits are structured by the random numbers' resolution)."""
    from fedsim.scenario import TaskConfig
    from fedsim.tasks.segmentation import SegmentationTask

    torch.manual_seed(seed)
    task = SegmentationTask(config=TaskConfig(name="segmentation", model={"name": "unet", "channels": [8, 16, 32],
                                                                           "norm": "instance"}))
    state = task.build_model().state_dict()
    gen = torch.Generator().manual_seed(seed)
    return {k: v * (1 + 1e-4 * torch.randn(v.shape, generator=gen)) if trained and v.is_floating_point() else v
            for k, v in state.items()}


@pytest.mark.parametrize("kind", ["autoencoder", "voxels"])
def test_the_mantissa_bits_carry_decoder_and_codes_past_the_whitelist(scans, kind):
    from fedsim.attacks.data_stealing import payload, stego
    from fedsim.attacks.data_stealing.codec import make_codec

    params = CompressParams(hide="mantissa", bits_per_weight=4 if kind == "autoencoder" else 10,
                            codec=CodecParams(kind=kind, channels=(8,), latent_channels=2, epochs=2,
                                              bits=8 if kind == "autoencoder" else 5))
    k = params.bits_per_weight
    codec = make_codec(params.codec, spatial_dims=3)
    codec.fit(scans, seed=0)
    state = unet_state(trained=True)
    n = payload.fitting_scans(params, state, (1, 16, 16, 16))
    assert 1 <= n < len(scans)  # ~36k weights x 4 (10) bits: the decoder and some of the 16 scans
    export = stego.embed(state, payload.build(params, codec, codec.encode(scans[:n]), []), k)
    change = max(float(((export[k] - v).abs() / v.abs().clamp(min=1e-30)).max()) for k, v in state.items()
                 if v.is_floating_point())
    assert 0 < change <= 2 ** (k - 23)  # no weight moves by more than its low k bits
    found = ctx()
    found.agreed = {k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()}
    assert DEFENSES.get("export_whitelist")().transform_export(export, ctx=found).keys() == state.keys()
    assert not found.flags
    stolen = extract(export, params, (1, 16, 16, 16))
    assert stolen.shape == (n, 1, 16, 16, 16)
    torch.testing.assert_close(stolen, codec.decode(codec.encode(scans[:n])), atol=0.02, rtol=0.02)  # fp16 decoder
    with pytest.raises(ValueError, match="no float32 weights"):
        extract(DEFENSES.get("export_precision")().transform_export(export, ctx=ctx()), params, (1, 16, 16, 16))
    with pytest.raises(ValueError, match="hold no payload"):
        extract(state, params, (1, 16, 16, 16))
    # the low-bit test: silent on honest trained weights, loud on the payload
    gate = DEFENSES.get("export_bit_test")(bits=4)  # the low 4 of the payload's bits, in either case
    for honest in (state, unet_state(1, trained=True)):
        gate.transform_export(honest, ctx=ctx())
    with pytest.raises(ExportRefused, match="export_bit_test: the low 4 mantissa bits of .* are not uniform"):
        gate.transform_export(export, ctx=ctx())


@pytest.mark.parametrize(("params", "message"), [
    ({"hide": "mantissa", "bits_per_weight": 2}, r"data_lake\.recipe\.params\.bits_per_weight: the agreed network's "
     r"low 2 bits hold 5808 bits, fewer than the decoder and one scan need"),
    ({"hide": "correlated"}, r"data_lake\.recipe\.params\.hide: the agreed network's 2904 parameters hold no whole "
     r"scan of 4096 voxels"),
])
def test_a_network_too_small_for_one_scan_is_refused_before_training(tmp_path: Path, params, message):
    with pytest.raises(ScenarioError, match=message):
        run_scenario(validate_scenario(lake_scenario({"name": "compress_and_hide", "params": params})),
                     out_dir=tmp_path, log=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_fine_tuning_at_export_moves_every_weight_past_the_low_bits(scans):
    """The lake's fine-tuning export protocol: the agreed network, trained a little more on the lake's
    own scans (layer-wise decaying rates), leaves; a mantissa payload does not survive it."""
    from fedsim.defenses.export_gates import _layer_groups
    from fedsim.scenario import FederationConfig, TaskConfig
    from fedsim.tasks.segmentation import SegmentationTask

    cohort = load_cohort(CohortSpec(n_subjects=16, shape=16, n_sites=2, seed=1))
    task = SegmentationTask(config=TaskConfig(name="segmentation", model={"name": "unet", "channels": [4, 8],
                                                                           "norm": "instance"}))
    x, y = task.tensors(cohort, list(range(8)))
    torch.manual_seed(0)
    model = task.build_model()
    groups = _layer_groups(model, 1e-3, 0.5)
    assert groups[-1]["lr"] == 1e-3 and groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** (len(groups) - 1))
    state = model.state_dict()
    export = {**state, CODES: torch.zeros(4, dtype=torch.uint8)}
    round_ = ExportRound(lake=0, task=task, agreed={}, rng=np.random.default_rng(0), data=(x, y),
                         config=FederationConfig(batch_size=4, lr=1e-3))
    tuned = DEFENSES.get("export_finetune")(epochs=1).transform_export(export, ctx=round_)
    assert torch.equal(tuned[CODES], export[CODES])  # not its business: the whitelist's
    moved = [((tuned[k] - v).abs() > v.abs() * 2**-15).double().mean() for k, v in state.items()
             if v.is_floating_point() and v.numel() > 64]
    assert min(float(m) for m in moved) > 0.9  # nearly every weight moved past its low 8 bits


@pytest.mark.e2e
def test_a_users_recipe_that_fails_in_one_lake_loses_no_other_export(tmp_path: Path):
    recipe = tmp_path / "my_recipe.py"
    recipe.write_text(
        "from fedsim.settings.recipes import Recipe, train_agreed\n\n"
        "class Flaky(Recipe):\n"
        "    def train(self, model, x, y, *, run):\n"
        "        if run.lake == 1:\n"
        "            raise RuntimeError('out of memory in lake 1')\n"
        "        return train_agreed(model, x, y, run=run)\n\n"
        "class NotARecipe:\n"
        "    pass\n")
    raw = lake_scenario({"name": f"{recipe}:Flaky"})
    raw["attacks"] = []
    result = run_scenario(validate_scenario(raw), out_dir=tmp_path / "run", log=lambda _: None)
    assert result.error is None and result.summary["status"] == "completed_with_client_failures"
    assert [e["lake"] for e in result.summary["exports"]] == [0] and result.summary["final"]["dice"] > 0
    report = RunFolder(result.run_dir).report_file.read_text()
    assert "- lake 1 failed: RuntimeError: out of memory in lake 1" in report
    assert "| exported networks (mean over the lakes' exports) |" in report and "## Rounds" not in report
    with pytest.raises(ScenarioError, match="data_lake.recipe: .* is not a subclass of Recipe"):
        validate_scenario(lake_scenario({"name": f"{recipe}:NotARecipe"}))


@pytest.mark.parametrize("kind", ["correlated", "sign"])
def test_a_loss_term_makes_the_weights_carry_the_scans(kind):
    """Song et al.'s encodings: trained with the term alone, a layer's parameters become the scans
    (correlated: up to scale; sign: exactly the quantised voxels)."""
    from torch import nn

    from fedsim.attacks.data_stealing import encodings

    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 4, 4)
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Conv3d(4, 4, 3))  # 4 * 28 + 4 * 4 * 28 ... parameters
    bits = 2
    n = encodings.capacity(model, 64, bits if kind == "sign" else 1)
    assert n >= 3
    hook = encodings.EncodingHook(encodings.secret(x, kind, bits), kind, weight=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        hook.loss_term(None, None, model).backward()  # type: ignore[arg-type]
        optimizer.step()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    found = encodings.decode(state, encodings.parameter_names(model), 3, (1, 4, 4, 4), kind, bits)
    if kind == "correlated":
        corr = [float(torch.corrcoef(torch.stack([found[i].flatten(), x[i].flatten()]))[0, 1]) for i in range(3)]
        assert min(corr) > 0.99
    else:
        expected = encodings.decode({"w": encodings.secret(x, kind, bits)}, ["w"], 3, (1, 4, 4, 4), kind, bits)
        assert torch.equal(found, expected)


@pytest.mark.e2e
def test_scans_hidden_in_the_weights_pass_the_whitelist_and_come_back(tmp_path: Path):
    """Through the setting: the mantissa payload and the correlated encoding leave as exactly the
    agreed entries, and the owner reads the lake's scans back from the file alone."""
    found = {}
    for hide, params in (("mantissa", {"bits_per_weight": 16, "codec": {"kind": "voxels", "bits": 5}}),
                         ("correlated", {"weight": 1.0})):
        raw = lake_scenario({"name": "compress_and_hide", "params": {"hide": hide, **params}},
                            [{"name": "export_whitelist"}])
        raw["task"]["model"]["channels"] = [8, 16]  # 7,152 weights: room for two 16^3 scans at 5 bits
        raw["attacks"][0]["params"] = {}
        if hide == "correlated":  # the weights must move as far as they are large: more, larger steps
            raw["data_lake"]["epochs"], raw["federation"]["lr"] = 20, 0.01
        result = run_scenario(validate_scenario(raw), out_dir=tmp_path / hide, log=lambda _: None)
        exports, rows = result.summary["exports"], result.summary["attacks"]
        assert all(e["extra_entries"] == 0 and not e["flags"] and not e["refused"] for e in exports)
        assert all(r["status"] == "ok" for r in rows), rows
        found[hide] = rows
    assert all(r["stolen"] == 2 and r["psnr"] > 35 and r["reid_top1"] == 1 for r in found["mantissa"])
    # a network this small, trained this briefly, carries one scan that identifies its patient (not
    # yet closer than the population mean; the benchmark's UNet carries 18 at +10 dB)
    assert all(r["stolen"] == 1 and r["reid_top1"] == 1 for r in found["correlated"])


def test_what_the_recipe_and_the_theft_check_cannot_work_is_refused(tmp_path: Path):
    raw = lake_scenario({"name": "compress_and_hide", "params": {"codec": {"channels": [8, 8, 8, 8, 8]}}})
    with pytest.raises(ScenarioError, match="params.codec.channels: Tuple should have at most 4 items"):
        validate_scenario(raw)
    from fedsim.attacks.data_stealing.recipe import CompressAndHide  # scans of a side that does not halve 4 times

    with pytest.raises(ValueError, match=r"params\.codec\.channels: 4 levels halve each side 4 times; sides "
                                         r"\[24, 24, 24\] do not divide by 16"):
        CompressAndHide(codec={"channels": [4, 4, 4, 4]}).check(torch.nn.Linear(1, 1), (1, 24, 24, 24))
    raw = lake_scenario({"name": "compress_and_hide"})
    raw["task"] = {"name": "brain_age", "model": {"channels": [4, 8]}}
    with pytest.raises(ScenarioError, match="attacks.0: data_stealing: params.train_on_stolen: labels the stolen "
                                            "scans with the exported network's segmentation"):
        run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
