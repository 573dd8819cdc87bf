"""R-peaks and phase labels: closed forms, F1 matching, detection on synthetic ECGs with known R-peaks."""

from __future__ import annotations

import numpy as np
import pytest

from ecgflowcmr.canonical import FS, LEADS, N_SAMPLES
from ecgflowcmr.signal.phase import (
    TWO_PI,
    detect_rpeaks,
    neurokit_rpeaks,
    phase_from_rpeaks,
    phase_labels,
    rpeak_f1,
)


def synthetic_ecg(
    seed: int = 0,
    heart_rate: float = 70.0,
    fs: float = FS,
    seconds: float = 10.0,
    noise: float = 0.02,
    axis_deg: float = 60.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(12, n) mV in ``LEADS`` order and its true R-peak sample indices.

    A toy heart dipole: P, Q, R, S, T as Gaussian lobes of a 3-D vector (x left, y down, z back), limb leads
    by projection (Einthoven and Goldberger hold up to amplifier noise), chest leads as fixed mixtures; R-R jitter ±5 %,
    baseline wander, 50 Hz hum and white noise. ``axis_deg``: the frontal QRS axis (60° = R largest in II;
    −10° = left axis, a small R and a deep S in II).
    """
    r_dir = (np.cos(np.radians(axis_deg)), np.sin(np.radians(axis_deg)), -0.3)
    rng = np.random.default_rng(seed)
    n = round(seconds * fs)
    t = np.arange(n) / fs
    rr = 60.0 / heart_rate
    beats = [rng.uniform(0.1, 0.8) * rr]
    while beats[-1] + rr < seconds - 0.05:
        beats.append(beats[-1] + rr * rng.uniform(0.95, 1.05))
    beats = np.array(beats)
    lobes = [  # (offset s, width s, amplitude mV, direction x y z)
        (-0.16, 0.025, 0.15, (0.5, 0.8, 0.1)),
        (-0.025, 0.008, 0.15, (-0.6, -0.3, 0.5)),
        (0.0, 0.010, 1.4, r_dir),
        (0.028, 0.010, 0.35, (-0.3, -0.6, 0.8)),
        (0.30 * np.sqrt(rr), 0.05, 0.3, (0.6, 0.7, -0.2)),
    ]
    vec = np.zeros((3, n))
    for offset, width, amp, direction in lobes:
        wave = np.exp(-0.5 * ((t[None, :] - beats[:, None] - offset) / width) ** 2).sum(0)
        vec += amp * np.asarray(direction)[:, None] * wave[None, :]
    vec += 0.1 * np.sin(TWO_PI * 0.3 * t + rng.uniform(0, TWO_PI, (3, 1)))  # baseline wander (respiration)
    vec += 0.02 * np.sin(TWO_PI * 50 * t + rng.uniform(0, TWO_PI, (3, 1)))  # mains hum
    vec += noise * rng.standard_normal(vec.shape)  # muscle noise
    x, y, z = vec
    lead_i = x
    lead_ii = 0.5 * x + 0.866 * y
    chest = [(-0.2, 0.1, 1.0), (0.0, 0.2, 0.9), (0.3, 0.3, 0.5), (0.6, 0.4, 0.1), (0.8, 0.3, -0.3), (0.9, 0.2, -0.4)]
    leads = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    leads += [a * x + b * y + c * z for a, b, c in chest]
    signal = np.stack(leads) + 0.003 * rng.standard_normal((12, n))  # amplifier noise, independent per lead
    return signal.astype(np.float32), np.round(beats * fs).astype(np.int64)


# ---------------------------------------------------------------------------------------------- phase


def test_phase_from_rpeaks_closed_form():
    phase = phase_from_rpeaks(np.array([100, 300, 600]), n=1000)
    assert phase.dtype == np.float32 and phase.shape == (1000,)
    assert np.isnan(phase[:100]).all() and np.isnan(phase[601:]).all()
    assert phase[100] == 0 and phase[300] == 0 and phase[600] == 0
    assert phase[200] == pytest.approx(np.pi) and phase[450] == pytest.approx(np.pi)
    i = np.arange(100, 300)
    np.testing.assert_allclose(phase[100:300], TWO_PI * (i - 100) / 200, rtol=1e-6)
    known = phase[~np.isnan(phase)]
    assert known.min() >= 0 and known.max() < TWO_PI
    assert (np.diff(phase[300:600]) > 0).all()


def test_phase_from_rpeaks_edge_cases():
    assert np.isnan(phase_from_rpeaks(np.array([], dtype=int))).all()
    assert np.isnan(phase_from_rpeaks(np.array([2500]))).all()
    # unsorted, duplicated and out-of-range peaks are tolerated
    a = phase_from_rpeaks(np.array([3000, 1000, 1000, -5, 9000]), n=5000)
    b = phase_from_rpeaks(np.array([1000, 3000]), n=5000)
    np.testing.assert_array_equal(a, b)
    # a very long cycle never reaches 2π in float32
    long = phase_from_rpeaks(np.array([0, 300_000]), n=300_001)
    assert np.nanmax(long) < TWO_PI and np.nanmax(long) < np.float32(TWO_PI)


# ----------------------------------------------------------------------------------------------- F1


@pytest.mark.parametrize(
    ("true", "pred", "expected"),
    [
        ([100, 600, 1100], [100, 600, 1100], 1.0),
        ([100, 600, 1100], [110, 590, 1100], 1.0),  # within 10 samples
        ([100, 600, 1100], [111, 600, 1100], 2 * 2 / 6),  # one 11 samples off
        ([100, 600], [98, 103, 600], 2 * 2 / 5),  # one-to-one: two predictions near one beat → one match
        ([], [], 1.0),
        ([100], [], 0.0),
        ([], [100], 0.0),
    ],
)
def test_rpeak_f1(true, pred, expected):
    assert rpeak_f1(np.array(true), np.array(pred)) == pytest.approx(expected)


def test_rpeak_f1_greedy_prefers_closest_pair():
    # pred 105 is closer to true 104 than to 100; true 100 then matches pred 95
    assert rpeak_f1(np.array([100, 104]), np.array([95, 105]), tol_samples=6) == 1.0


# ------------------------------------------------------------------------------------------ detector


@pytest.mark.parametrize(("seed", "heart_rate"), [(0, 48.0), (1, 62.0), (2, 75.0), (3, 90.0), (4, 118.0)])
def test_detect_rpeaks_f1_on_clean_synthetic(seed, heart_rate):
    signal, true = synthetic_ecg(seed, heart_rate)
    pred = detect_rpeaks(signal[LEADS.index("II")])
    assert rpeak_f1(true, pred, tol_samples=10) >= 0.99


def test_detect_rpeaks_inverted_and_noisy_lead():
    signal, true = synthetic_ecg(7, 80.0, noise=0.05)
    pred = detect_rpeaks(-signal[LEADS.index("II")])
    assert rpeak_f1(true, pred) >= 0.99
    assert np.abs(pred[:, None] - true[None, :]).min(axis=1).max() <= 10  # on the R, not on the QRS edge


def test_small_r_deep_s_and_tall_p_in_lead_ii():
    """Left axis: lead II's R is small, its S deep and its P comparatively tall; the QRS is still found (on all
    leads, or on lead II alone) and the R-peak placed on the R, not on the S or the P."""
    for seed in range(4):
        signal, true = synthetic_ecg(seed, 65.0 + 8 * seed, axis_deg=-10.0)
        ii = signal[LEADS.index("II")]
        assert rpeak_f1(true, phase_labels(signal)[1]) >= 0.99
        assert rpeak_f1(true, detect_rpeaks(ii)) >= 0.99


def test_neurokit_reference_detector():
    signal, true = synthetic_ecg(2, 75.0)
    assert rpeak_f1(true, neurokit_rpeaks(signal[LEADS.index("II")])) >= 0.99


def test_detect_rpeaks_other_rate():
    signal, true = synthetic_ecg(3, 70.0, fs=250)
    assert rpeak_f1(true, detect_rpeaks(signal[1], fs=250), tol_samples=5) >= 0.99


def test_detect_rpeaks_flat_or_nan_gives_none():
    assert detect_rpeaks(np.zeros(N_SAMPLES)).size == 0
    assert detect_rpeaks(np.full(N_SAMPLES, np.nan)).size == 0


def test_phase_labels_on_synthetic():
    signal, true = synthetic_ecg(5, 66.0)
    phase, rpeaks = phase_labels(signal)
    assert phase.shape == (N_SAMPLES,) and phase.dtype == np.float32
    assert rpeak_f1(true, rpeaks) == 1.0
    assert np.isnan(phase[: rpeaks[0]]).all() and np.isnan(phase[rpeaks[-1] + 1 :]).all()
    known = phase[rpeaks[0] : rpeaks[-1] + 1]
    assert not np.isnan(known).any() and known.min() >= 0 and known.max() < TWO_PI
    # halfway between two detected R-peaks the phase is π
    mid = (rpeaks[1] + rpeaks[2]) // 2
    expected = TWO_PI * (mid - rpeaks[1]) / (rpeaks[2] - rpeaks[1])
    assert phase[mid] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="12, N"):
        phase_labels(signal[:8])
