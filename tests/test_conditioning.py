"""Conditioning-fidelity measures: ES frame on cines with a known ES, against the phantom's own timing,
and own- vs swapped-ECG generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgflowcmr.evaluation.conditioning import (
    circular_frame_error,
    conditioning_metrics,
    es_frame,
    measure_conditioning,
    motion_curve,
    swap_partners,
)

T, SIZE = 50, 48


def beating_disk(es: int, seed: int = 0, noise: float = 0.03, plateau: int = 3, radius_ed: float = 12.0,
                 centre: tuple[float, float] = (24.0, 24.0)) -> np.ndarray:
    """(T, SIZE, SIZE) in [0, 1]: a bright blood pool whose radius falls from ED (frame 0) to its minimum at
    frames es … es + plateau − 1 (end-systole through isovolumic relaxation), then refills; plus noise."""
    t = np.arange(T, dtype=np.float64)
    contraction = 0.5 * (1 - np.cos(np.pi * np.clip(t / es, 0, 1)))  # 0 → 1 at es
    relaxation = np.clip((t - es - plateau + 1) / (T - es - plateau), 0, 1)  # 0 → 1 by the next R-peak
    g = np.where(t < es, 1 - contraction, np.where(t < es + plateau, 0.0, relaxation**0.7))  # 1 ED, 0 ES
    radius = radius_ed * (0.7 + 0.3 * g)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dist = np.hypot(yy - centre[0], xx - centre[1])
    frames = 0.25 + 0.6 / (1 + np.exp((dist[None] - radius[:, None, None]) / 0.8))
    rng = np.random.default_rng(seed)
    return np.clip(frames + noise * rng.standard_normal(frames.shape), 0, 1).astype(np.float32)


def test_es_frame_of_known_cines() -> None:
    es = [8, 12, 20, 27, 35]
    found = np.array([es_frame(beating_disk(e, seed=e))[0] for e in es])
    # within 2 frames of the true ES plateau (e … e + 2); the estimate drifts early when the contraction
    # slows into end-systole (frames within 95% of the maximum), and it orders the cines right
    assert np.all(found >= np.array(es) - 2) and np.all(found <= np.array(es) + 2)
    assert np.all(np.diff(found) >= 3)
    curve = motion_curve(beating_disk(20))[0]
    assert curve.shape == (T,)
    assert curve[0] < 0.2 * curve.max()  # frame 0 is the reference (ED)


def test_es_frame_ignores_position_and_size() -> None:
    a = es_frame(beating_disk(18, seed=1, centre=(15.0, 30.0), radius_ed=9.0))
    b = es_frame(beating_disk(18, seed=2, centre=(30.0, 18.0), radius_ed=14.0))
    assert abs(a[0] - b[0]) <= 1.0


def test_circular_error_wraps() -> None:
    assert circular_frame_error(np.array([49.0]), np.array([0.0]), 50)[0] == 1.0
    assert circular_frame_error(np.array([10.0]), np.array([35.0]), 50)[0] == 25.0
    np.testing.assert_allclose(circular_frame_error(np.array([3.0, 20.5]), np.array([47.0, 18.0]), 50), [6.0, 2.5])


def test_es_frame_recovers_the_phantom_timing() -> None:
    """Real phantom cines: the estimate against the simulator's end of ejection (T-wave end, volume minimum)."""
    from ecgflowcmr.phantom.config import PhantomConfig
    from ecgflowcmr.phantom.heart import filling_curve
    from ecgflowcmr.phantom.simulate import simulate_subject

    cfg = PhantomConfig()
    found, truth = [], []
    for index in range(12):
        s = simulate_subject(index, 3, cfg, with_cine=True)
        g, _ = filling_curve(np.arange(cfg.n_frames) * s.ecg.cine_rr_s / cfg.n_frames, s.ecg, s.physiology)
        truth.append(np.flatnonzero(g <= g.min() + 1e-6)[0])  # first frame of the volume minimum
        found.append(es_frame(s.cine.frames.astype(np.float32) / 255.0)[0])
    found, truth = np.array(found), np.array(truth, dtype=np.float64)
    assert truth.std() > 0.5  # the cohort's ES frames differ: the test can tell a constant from a fit
    bias = float(np.mean(found - truth))
    assert -1.5 <= bias <= 0.5
    assert np.abs(found - truth - bias).mean() <= 0.6
    assert np.corrcoef(found, truth)[0, 1] >= 0.85


def cohort(es_frames: list[int], seed: int) -> np.ndarray:
    return np.stack([beating_disk(es, seed=seed + i) for i, es in enumerate(es_frames)])


ES = [14, 18, 22, 26, 30, 34]


def test_own_ecg_generator_beats_a_swapped_one() -> None:
    real = cohort(ES, seed=0)
    partner = swap_partners(len(ES))
    own = cohort(ES, seed=100)  # a generator that follows the ECG's timing, new noise
    swapped = cohort([ES[j] for j in partner], seed=100)  # the same generator fed the partner's ECG
    m = conditioning_metrics(real, own, swapped, partner)
    assert m["es_frame_mae_own_ecg"]["value"] <= 1.0
    assert m["es_frame_mae_swapped_ecg"]["value"] >= 3.0
    assert m["es_frame_mae_constant"]["value"] >= 3.0
    assert m["es_frame_corr_own_ecg"]["value"] > 0.9 > m["es_frame_corr_swapped_ecg"]["value"]
    assert m["motion_curve_corr_own_ecg"]["value"] > m["motion_curve_corr_swapped_ecg"]["value"]
    assert m["ecg_swap_sensitivity"]["value"] > 0.1  # timing only; real pairs also differ in noise
    assert all("definition" in v for v in m.values())


def test_a_generator_that_ignores_the_ecg_scores_zero_sensitivity() -> None:
    real = cohort(ES, seed=0)
    partner = swap_partners(len(ES))
    same = cohort([22] * len(ES), seed=100)  # one timing whatever the ECG
    m = conditioning_metrics(real, same, same.copy(), partner)
    assert m["ecg_swap_sensitivity"]["value"] == 0.0
    assert m["es_frame_mae_own_ecg"]["value"] == m["es_frame_mae_swapped_ecg"]["value"]
    assert m["es_frame_mae_own_ecg"]["value"] >= 3.0
    assert abs(m["es_frame_corr_own_ecg"]["value"]) < 0.5


def test_bad_partners_raise() -> None:
    real = cohort(ES[:3], seed=0)
    with pytest.raises(ValueError):
        conditioning_metrics(real, real, real, np.arange(3))  # partner i = i
    with pytest.raises(ValueError):
        conditioning_metrics(real, real, real[:2], swap_partners(3))


class TimingFromECG:
    """A stand-in pipeline: the cine's ES frame is read from the ECG (lead I, sample 0); records the seeds."""

    def __init__(self) -> None:
        self.seeds: list[int] = []
        self.rpeaks: list = []

    def generate_batch(self, x: torch.Tensor, seed: list[int], rpeaks: list | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        self.seeds += list(seed)
        self.rpeaks += [None] * len(seed) if rpeaks is None else list(rpeaks)
        frames = np.stack([beating_disk(int(e), seed=s % 1000) for e, s in zip(x[:, 0, 0].tolist(), seed)])
        return frames, np.ones(len(frames), dtype=bool)


def test_measure_conditioning_swaps_ecgs_and_keeps_seeds() -> None:
    ecgs = np.zeros((len(ES), 12, 5000), dtype=np.float32)
    ecgs[:, 0, 0] = ES
    seeds = [1000 + i for i in range(len(ES))]
    pipe = TimingFromECG()
    rpeaks = [np.array([i, 500 + i]) for i in range(len(ES))]  # each ECG's own R-peaks, as read_ecg carries them
    m = measure_conditioning(pipe, ecgs, seeds, cohort(ES, seed=0), batch_size=4, rpeaks=rpeaks)
    assert pipe.seeds == seeds + seeds  # swapped pass, then own pass: item i keeps its noise
    partner = swap_partners(len(ES))
    expected = [rpeaks[j] for j in partner] + rpeaks  # the R-peaks travel with their ECG
    assert all(np.array_equal(a, b) for a, b in zip(pipe.rpeaks, expected, strict=True))
    assert m["es_frame_mae_own_ecg"]["value"] <= 1.0
    assert m["es_frame_mae_swapped_ecg"]["value"] >= 3.0
    assert m["conditioning_items"]["value"] == len(ES)
