"""Split inference (setting split_inference) and the white-box inversion of the features a hospital
sends: the cut, the setting end to end on 2D slices, and the refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fedsim.loading import validate_scenario
from fedsim.models.brain_age import BrainAgeCNN
from fedsim.run_folder import RunFolder
from fedsim.runner import run_scenario
from fedsim.scenario import ScenarioError
from tests.conftest import tiny_scenario


def test_the_two_halves_of_a_cut_network_compose_to_the_whole():
    torch.manual_seed(0)
    model = BrainAgeCNN(channels=[4, 8, 16], spatial_dims=2)
    x = torch.randn(3, 1, 32, 32)
    assert model.blocks == 3
    for split in (1, 2, 3):
        first = model.first(split)
        assert torch.allclose(model.rest(first(x), after=len(first)), model(x), atol=1e-6)
    assert model.first(1)(x).shape == (3, 4, 32, 32)  # after the first block's activation, before its pooling


def test_he_et_als_cnn_has_two_convolutions_per_block_and_cuts_after_the_2nd_4th_6th():
    torch.manual_seed(0)
    model = BrainAgeCNN(channels=[4, 8, 16], spatial_dims=2, convs=2)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7  # six 3x3 convolutions and the 1x1 head
    x = torch.randn(2, 1, 32, 32)
    for split, side in ((1, 32), (2, 16), (3, 8)):
        first = model.first(split)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in first.modules()) == 2 * split
        assert first(x).shape == (2, [4, 8, 16][split - 1], side, side)
        assert torch.allclose(model.rest(first(x), after=len(first)), model(x), atol=1e-6)
    assert "features.0.conv.weight" in BrainAgeCNN(channels=[4], spatial_dims=2).state_dict()  # convs 1: as before
    with pytest.raises(ScenarioError, match="task.model.convs: .*only brain_age_cnn stacks convolutions"):
        validate_scenario(tiny_scenario(task={"model": {"name": "lenet", "channels": [4, 4, 4], "norm": "none",
                                                        "convs": 2}}))


def test_dropout_at_the_cut_zeroes_a_share_p_and_keeps_the_mean():
    import numpy as np

    from fedsim.defenses.split_defenses import SplitFeatureDropout

    v = torch.rand(4, 8, 16, 16) + 1.0
    out = SplitFeatureDropout(p=0.3).transform_features(v, rng=np.random.default_rng(0))
    assert abs(float((out == 0).double().mean()) - 0.3) < 0.02
    assert abs(float(out.mean()) / float(v.mean()) - 1) < 0.02


def split_scenario(split: int, **sections) -> dict:
    return tiny_scenario(
        setting="split_inference", data={"n_subjects": 40, "shape": 32},
        task={"name": "brain_age_slice", "model": {"name": "brain_age_cnn", "channels": [8, 16, 32]}},
        federation={"clients": 2, "batch_size": 8, "optimizer": "adam", "lr": 0.003},
        split_inference={"split": split, "scans": 4, "train_scans": 40, "epochs": 2},
        attacks=[{"name": "split_inversion", "params": {"iterations": 200, "lr": 0.05}}], **sections)


@pytest.mark.e2e
def test_the_server_rebuilds_the_slices_from_an_early_cut_and_not_from_a_deep_one(tmp_path: Path):
    found = {}
    for split in (1, 3):
        result = run_scenario(validate_scenario(split_scenario(split)), out_dir=tmp_path / str(split),
                              log=lambda _: None)
        assert result.error is None and result.summary["final"]["mae"] > 0
        rows = result.summary["attacks"]
        assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["kind"] == "activations" for r in rows)
        found[split] = rows
        found_mae = result.summary["final"]["mae"]  # the same deployed network at every cut
        sent = result.summary["sent"]
        assert [s["scans"] for s in sent] == [4, 4] and sent[0]["features"][0] == [8, 16, 32][split - 1]
    early, deep = found[1], found[3]
    assert all(r["ssim"] > 0.9 and r["psnr_gain"] > 8 and r["reid_top1"] == 1 for r in early)
    assert max(r["ssim"] for r in deep) < min(r["ssim"] for r in early) - 0.2  # the deeper the cut, the less
    report = RunFolder(Path(result.run_dir)).report_file.read_text()
    assert "- Split inference: 2 hospitals each run the first 3 convolution block(s)" in report
    assert "| split_inversion | 1 | 0 | activations |" in report
    # model perturbation: each hospital's private noise on its first layers; the server inverts through
    # its clean copy, and the deployed network is scored through the noisy ones
    noisy = run_scenario(validate_scenario(split_scenario(1, defenses=[
        {"name": "split_model_noise", "params": {"sigma": 0.1}}])), out_dir=tmp_path / "noise", log=lambda _: None)
    rows = noisy.summary["attacks"]
    assert max(r["ssim"] for r in rows) < min(r["ssim"] for r in early) - 0.1
    assert noisy.summary["undefended"]["mae"] == found_mae and noisy.summary["final"]["mae"] != found_mae
    assert "through the hospitals' defenses (mean)" in RunFolder(Path(noisy.run_dir)).report_file.read_text()
    blurred = run_scenario(validate_scenario(split_scenario(1, defenses=[
        {"name": "split_feature_noise", "params": {"sigma": 1.0}}])), out_dir=tmp_path / "features", log=lambda _: None)
    assert max(r["ssim"] for r in blurred.summary["attacks"]) < min(r["ssim"] for r in early) - 0.1


@pytest.mark.e2e
def test_an_inverse_network_learned_on_population_queries_beats_one_learned_on_noise(tmp_path: Path):
    """He et al.'s black box: the server learns features -> scan on queries of its own, once for all
    hospitals; queries from the scans' own population teach it more than random noise."""
    found = {}
    for queries in ("population", "noise"):
        raw = split_scenario(2)
        raw["attacks"] = [{"name": "split_inverse_network", "params": {"queries": queries, "n": 40, "epochs": 40}}]
        if queries == "population":  # and the query-free shadow of the first layers, on the same features
            raw["attacks"].append({"name": "split_shadow_inversion", "params": {"iterations": 150, "shadow_scans": 40,
                                                                                 "shadow_epochs": 5}})
        result = run_scenario(validate_scenario(raw), out_dir=tmp_path / queries, log=lambda _: None)
        rows = [r for r in result.summary["attacks"] if r["attack"] == "split_inverse_network"]
        assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["query_scans"] == 40 for r in rows)
        found[queries] = min(r["ssim"] for r in rows), max(r["ssim"] for r in rows)
        shadow = [r for r in result.summary["attacks"] if r["attack"] == "split_shadow_inversion"]
        if shadow:
            assert [r["status"] for r in shadow] == ["ok", "ok"] and all(r["shadow_scans"] == 40 for r in shadow)
            found["shadow"] = max(r["ssim"] for r in shadow), min(r["ssim"] for r in shadow)
    assert found["population"][0] > 0.6 and found["population"][0] > found["noise"][1] + 0.1, found
    assert found["shadow"][0] < found["population"][0], found  # without the hospital's weights: less
    # (what a shadow recovers at each depth, trained on more scans: benchmarks/split_inversion.py --attacks shadow)


@pytest.mark.parametrize(("change", "message"), [
    ({"split_inference": {"split": 4}}, "split_inference.split: 4 is beyond the network's 3 convolution blocks"),
    ({"task": {"name": "segmentation", "model": {"name": "unet", "channels": [4, 8]}}},
     "task.model.name: split inference cuts brain_age_cnn between convolution blocks; 'unet' has no cut points"),
    ({"attacks": [{"name": "dlg"}]}, "attacks.0: dlg consumes gradient or weights observations"),
    ({"defenses": [{"name": "model_noise", "params": {"sigma": 0.01}}]}, "defenses.0: model_noise is not a "
     "split-inference defense (split_model_noise, split_feature_noise, split_feature_dropout)"),
    ({"defenses": [{"name": "split_model_noise", "params": {"sigma": 0}}]}, "defenses.0: params.sigma: Input "
     "should be greater than 0"),
])
def test_bad_split_input_is_one_line_naming_the_key(change, message):
    raw = split_scenario(1)
    raw.update(change)
    with pytest.raises(ScenarioError, match=re.escape(message)) as found:
        validate_scenario(raw)
    assert "\n" not in str(found.value)


def test_training_queries_beyond_the_providers_own_scans_are_refused_before_training(tmp_path: Path):
    raw = split_scenario(1)
    raw["attacks"] = [{"name": "split_inverse_network", "params": {"queries": "training", "n": 41}}]
    with pytest.raises(ScenarioError, match=re.escape("attacks.0: split_inverse_network: params.n: queries 'training' "
                                                      "asks for 41 of the provider's training scans, but it holds 40 "
                                                      "(split_inference.train_scans)")):
        run_scenario(validate_scenario(raw), out_dir=tmp_path, log=lambda _: None)
    assert not list(tmp_path.iterdir())  # refused before a run folder, let alone training


def test_a_dataset_without_a_population_sample_is_refused():
    """The provider trains on scans of its own; a dataset without them would train it on the test set."""
    from fedsim.settings.split_inference import SplitInference

    scenario = validate_scenario(split_scenario(1))
    on_disk = scenario.model_copy(update={"data": scenario.data.model_copy(update={"dataset": "ixi"})})
    with pytest.raises(ValueError, match="split_inference.train_scans: dataset 'ixi' has no population sample"):
        SplitInference.check_scenario(SplitInference.parse_config(on_disk), on_disk)


def test_a_split_defense_in_a_federation_is_refused():
    with pytest.raises(ScenarioError, match="defenses.0: split_feature_noise defends split inference"):
        validate_scenario(tiny_scenario(defenses=[{"name": "split_feature_noise", "params": {"sigma": 0.1}}]))
