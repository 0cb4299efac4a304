"""Leakage metrics: each test checks a property that a wrong formula would break."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedsim.attacks.metrics import (
    PSNR_CAP,
    match_batch,
    ms_ssim,
    ms_ssim_scales,
    mse,
    psnr,
    psnr_summary,
    reidentification_ranks,
    score_reconstruction,
    ssim,
)


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def images(request: pytest.FixtureRequest) -> torch.Tensor:
    gen = torch.Generator().manual_seed(request.param)
    shape = (4, 1, 24, 24) if request.param == 2 else (4, 1, 16, 16, 16)
    smooth = torch.randn(shape, generator=gen).cumsum(-1).cumsum(-2)  # structure for SSIM to see
    return smooth / smooth.flatten(1).std(1).view(-1, *[1] * (len(shape) - 1))


def test_psnr_identical_is_inf_and_drops_with_noise(images: torch.Tensor) -> None:
    assert torch.isinf(psnr(images, images)).all()
    noise = torch.randn_like(images)
    small, large = psnr(images + 0.01 * noise, images), psnr(images + 0.1 * noise, images)
    assert (small > large + 15).all()  # 10x the noise amplitude is 20 dB
    assert small.shape == (4,)


def test_psnr_matches_formula_with_fixed_range() -> None:
    truth = torch.zeros(1, 1, 8, 8)
    recon = torch.full_like(truth, 0.1)
    assert mse(recon, truth).item() == pytest.approx(0.01)
    assert psnr(recon, truth, data_range=1.0).item() == pytest.approx(20.0)


def test_ssim_is_one_for_identical_and_lower_with_noise(images: torch.Tensor) -> None:
    same = ssim(images, images)
    noisy = ssim(images + 0.5 * torch.randn_like(images), images)
    assert torch.allclose(same, torch.ones(4, dtype=same.dtype), atol=1e-6)
    assert (noisy < 0.95).all()
    assert noisy.shape == (4,)


def test_ssim_works_on_small_volumes() -> None:
    x = torch.randn(2, 1, 8, 8, 8)
    assert torch.isfinite(ssim(x + 0.1, x)).all()


def test_ms_ssim_uses_the_scales_the_size_allows_and_ranks_blur_below_noise_of_the_same_error() -> None:
    assert ms_ssim_scales((16, 16, 16)) is None and ms_ssim(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16,
                                                                                                       16)) is None
    assert ms_ssim_scales((32, 32, 32)) == (3, 7) and ms_ssim_scales((64, 64)) == (4, 7)
    assert ms_ssim_scales((128, 128)) == (5, 7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 64, 64, generator=gen).cumsum(-1).cumsum(-2)
    x = x / x.flatten(1).std(1).view(-1, 1, 1, 1)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2, dtype=torch.float64), atol=1e-6)
    fine = x + 0.05 * torch.randn(x.shape, generator=gen)
    coarse = x + 0.05 * torch.randn(2, 1, 8, 8, generator=gen).repeat_interleave(8, -1).repeat_interleave(8, -2)
    assert torch.allclose(mse(fine, x), mse(coarse, x), rtol=0.2)
    # the same error at coarse scales (blotches) costs more structure at the coarse scales MS-SSIM adds
    assert (ms_ssim(coarse, x) < ms_ssim(fine, x)).all() and (ms_ssim(fine, x) < 1).all()


def test_match_batch_recovers_a_shuffle(images: torch.Tensor) -> None:
    order = [2, 0, 3, 1]
    shuffled = images[order] + 0.01 * torch.randn_like(images)
    perm = match_batch(shuffled, images)
    assert torch.allclose(shuffled[perm], images, atol=0.1)
    assert sorted(perm) == [0, 1, 2, 3]


def test_reidentification_rank_one_for_near_truth_and_invariant_to_gain(images: torch.Tensor) -> None:
    pool = torch.randn(20, *images.shape[1:])
    candidates = torch.cat([pool[:10], images, pool[10:]])
    true_index = torch.arange(10, 14)
    recon = 3.0 * (images + 0.05 * torch.randn_like(images)) + 2.0  # z-scoring removes gain/offset
    assert reidentification_ranks(recon, candidates, true_index).tolist() == [1, 1, 1, 1]
    wrong = reidentification_ranks(recon, candidates, torch.tensor([0, 1, 2, 3]))
    assert (wrong > 1).all()


def test_score_reconstruction_prior_and_perfect_recon(images: torch.Tensor) -> None:
    prior = images.mean(0)
    candidates = torch.cat([images, torch.randn(6, *images.shape[1:])])
    perfect = score_reconstruction(images[[1, 0, 3, 2]], images, prior=prior, candidates=candidates,
                                   true_index=[0, 1, 2, 3])
    json.dumps(perfect, allow_nan=False)
    assert perfect["psnr"] == PSNR_CAP and perfect["mse"] == 0.0  # matching undid the shuffle
    assert perfect["reid_top1"] == 1.0 and perfect["median_rank"] == 1.0 and perfect["unrecognisable"] == 0.0
    assert perfect["chance_top1"] == pytest.approx(0.1)
    expected_prior = psnr(prior.expand_as(images), images).mean().item()
    assert perfect["prior_psnr"] == pytest.approx(expected_prior)
    assert perfect["psnr_gain"] == pytest.approx(PSNR_CAP - expected_prior)
    separate = score_reconstruction(images[[1, 0, 3, 2]], images, prior=prior, candidates=candidates,
                                    true_index=[0, 1, 2, 3], batch=False)  # separate observations: no re-pairing
    assert separate["reid_top1"] == 0.0 and separate["mse"] > 0.0

    noise = score_reconstruction(torch.randn(images.shape, generator=torch.Generator().manual_seed(9)), images,
                                 prior=prior, candidates=candidates, true_index=[0, 1, 2, 3])
    assert noise["unrecognisable"] == 1.0  # white noise shares no structure with the scans

    as_prior = score_reconstruction(prior[None].expand_as(images).clone(), images, prior=prior,
                                    candidates=candidates, true_index=[0, 1, 2, 3])
    assert as_prior["psnr_gain"] == pytest.approx(0.0, abs=1e-9)
    assert as_prior["ssim_gain"] == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(as_prior["psnr"])


def test_exact_recoveries_are_counted_and_never_averaged_in_at_the_cap(images: torch.Tensor) -> None:
    prior = images.mean(0)
    candidates = torch.cat([images, torch.randn(6, *images.shape[1:])])
    half = images.clone()
    half[2:] += 0.1 * torch.randn(half[2:].shape, generator=torch.Generator().manual_seed(1))
    scores = score_reconstruction(half, images, prior=prior, candidates=candidates, true_index=[0, 1, 2, 3],
                                  batch=False)
    inexact = psnr(half[2:], images[2:]).mean().item()
    assert scores["exact"] == 0.5 and scores["psnr_inexact"] == pytest.approx(inexact)
    assert scores["psnr"] > 400  # the plain mean, with two items at the cap
    cell, gain = psnr_summary(scores)
    assert cell == f"{inexact:.1f} + 50% exact" and gain == f"{inexact - scores['prior_psnr']:+.1f}"
    perfect = score_reconstruction(images, images, prior=prior, candidates=candidates, true_index=[0, 1, 2, 3])
    assert perfect["exact"] == 1.0 and "psnr_inexact" not in perfect and psnr_summary(perfect) == ("exact", "exact")
    assert psnr_summary({"psnr": 21.04, "prior_psnr": 18.0}) == ("21.0", "+3.0")  # a row from before `exact`
    assert psnr_summary({"psnr": 510.0, "prior_psnr": 18.0})[0] == "510.0 (a mean with exact items at the cap)"
