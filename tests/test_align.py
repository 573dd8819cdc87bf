"""Cycle alignment: closed-form checks on synthetic phase ramps with known R-peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecgflowcmr.models.align import (
    align_cycles,
    cycle_boundaries,
    fixed_window,
    unwrap_phase,
    unwrapped_phase_from_rpeaks,
)

L, STRIDE, TWO_PI = 625, 8, 2 * math.pi


def ramp(rpeaks: list[int]) -> torch.Tensor:
    """Wrapped token phase (1, L) of a perfect prediction for these R-peaks (sample indices)."""
    return torch.remainder(unwrapped_phase_from_rpeaks([np.array(rpeaks)], L, STRIDE), TWO_PI).float()


def position_tokens(batch: int = 1, dim: int = 3) -> torch.Tensor:
    """Tokens whose features are affine in the token position, so linear interpolation is exact."""
    k = torch.arange(L, dtype=torch.float32)
    return torch.stack([k, 2 * k + 1, -k][:dim], dim=-1).expand(batch, -1, -1).contiguous()


def test_boundaries_found_exactly_at_rpeaks():
    rpeaks = [180, 588, 1052, 1460, 1932, 2404, 2788, 3300, 3700, 4148, 4604]  # on token centres 8k + 4
    (pos,) = cycle_boundaries(ramp(rpeaks))
    np.testing.assert_allclose(pos * STRIDE + STRIDE / 2, rpeaks, atol=1e-3)
    off_centre = [181, 590, 1050, 1467, 1930, 2401]  # elsewhere: exact to token resolution only
    (pos,) = cycle_boundaries(ramp(off_centre))
    np.testing.assert_allclose(pos[:6] * STRIDE + STRIDE / 2, off_centre, atol=1.0)  # then extrapolated


def test_cycles_resampled_at_equal_phase_steps():
    rpeaks = [180, 588, 1052, 1460, 1932, 2404, 2788, 3300, 3700, 4148, 4604]  # no extrapolated cycle fits
    for aggregate, expected_cycles in (("mean", range(10)), ("single", [4])):
        res = align_cycles(position_tokens(), ramp(rpeaks), aggregate=aggregate)
        want = np.mean([(rpeaks[c] + (rpeaks[c + 1] - rpeaks[c]) * np.arange(50) / 50 - 4) / 8
                        for c in expected_cycles], axis=0)
        np.testing.assert_allclose(res.tokens[0, :, 0].numpy(), want, atol=1e-3)
        assert res.cycles.item() == 10 and res.found.item()


def test_median_of_identical_cycles_is_the_cycle():
    pattern = torch.randn(50, 4)
    tokens = pattern.repeat(13, 1)[:L][None]  # period 50 tokens = 400 samples
    rpeaks = [8 * m + 4 for m in range(0, L, 50)]  # R-peak on token 0, 50, 100, …
    res = align_cycles(tokens, ramp(rpeaks), aggregate="median")
    torch.testing.assert_close(res.tokens[0], pattern, atol=1e-4, rtol=0)
    assert res.cycles.item() == 12


def test_mid_rr_cut_shifts_by_half_a_cycle():
    pattern = torch.randn(50, 4)
    tokens = pattern.repeat(13, 1)[:L][None]
    phase = ramp([8 * m + 4 for m in range(0, L, 50)])
    at_r = align_cycles(tokens, phase, cut="rpeak")
    mid = align_cycles(tokens, phase, cut="mid_rr")
    torch.testing.assert_close(mid.tokens, torch.roll(at_r.tokens, -25, dims=1), atol=1e-4, rtol=0)
    torch.testing.assert_close(mid.frame_phase, torch.remainder(at_r.frame_phase + math.pi, TWO_PI))


@pytest.mark.parametrize("aggregate", ["median", "mean", "single"])
def test_batch_equals_per_sample(aggregate):
    peaks = [[100, 700, 1290, 1900, 2500, 3080, 3700, 4300, 4900],
             [40, 300, 560, 830, 1090, 1350, 1600, 1870, 2130, 2400, 2650, 2900, 3160, 3420, 3680, 3930, 4200],
             [2000, 2900]]  # one complete cycle only
    phase = torch.cat([ramp(p) for p in peaks])
    phase[1, 300:310] = torch.remainder(phase[1, 300:310] + 0.3, TWO_PI)  # a wobble
    centres = torch.arange(L) * STRIDE + STRIDE / 2
    phase[2, centres < 2000] = TWO_PI - 0.2  # no extrapolated cycles around the one complete cycle
    phase[2, centres > 2900] = 0.2
    tokens = torch.randn(3, L, 5)
    batched = align_cycles(tokens, phase, aggregate=aggregate)
    for b in range(3):
        one = align_cycles(tokens[b : b + 1], phase[b : b + 1], aggregate=aggregate)
        torch.testing.assert_close(batched.tokens[b], one.tokens[0])
        assert batched.cycles[b] == one.cycles[0]
    assert batched.cycles.tolist()[2] == 1


def test_no_cycle_and_implausible_cycles_are_not_found():
    tokens = torch.randn(4, L, 3)
    flat = torch.full((1, L), 1.0)  # phase never wraps
    too_fast = ramp(list(range(20, 5000, 60)))  # 500 bpm: cycles of 7.5 tokens
    noise = torch.rand(1, L, generator=torch.Generator().manual_seed(0)) * TWO_PI  # incoherent
    nan = ramp([100, 600, 1100]).clone()
    nan[0, 5] = float("nan")
    res = align_cycles(tokens, torch.cat([flat, too_fast, noise, nan]))
    assert res.found.tolist() == [False, False, False, False]
    assert torch.isfinite(res.tokens).all() and (res.tokens == 0).all()


def test_unwrap_ignores_jitter_at_the_wrap():
    phase = torch.tensor([[6.0, 6.2, 0.05, 6.25, 0.1, 0.3]])
    u = unwrap_phase(phase)
    assert u[0, -1].item() == pytest.approx(TWO_PI + 0.3, abs=1e-5)


def test_fixed_window_and_uniform():
    tokens = position_tokens(2)
    window = fixed_window(tokens, 0.0, 62.5, 50)
    np.testing.assert_allclose(window[0, :, 0].numpy(), 62.5 * np.arange(50) / 50, atol=1e-4)
    whole = fixed_window(tokens, 0.0, float(L), 50)
    np.testing.assert_allclose(whole[1, :, 0].numpy(), L * np.arange(50) / 50, atol=1e-4)


def test_rpeak_phase_needs_two_peaks():
    u = unwrapped_phase_from_rpeaks([np.array([100]), np.array([100, 500])], L, STRIDE)
    assert torch.isnan(u[0]).all() and torch.isfinite(u[1]).all()
    assert u[1, 12].item() == pytest.approx(0.0, abs=1e-9)  # token 12 is centred on sample 100
