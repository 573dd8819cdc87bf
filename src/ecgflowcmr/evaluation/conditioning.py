"""Does the ECG control the generated cine? Conditioning-fidelity measures on cines in [0, 1] (T, H, W).

Latent or pixel errors against the subject's real cine mostly measure anatomy (size, position, contrast),
which the ECG only partly determines. These measures look at what the ECG does determine, and always
beside the same number with the ECG swapped to another subject's (same noise) and a reference:

- **ES timing.** Frame 0 is the R-peak (end-diastole); end-systole (ES) falls at the end of the T wave, so
  its frame index (of T over one R-R) moves with heart rate and QT. ``motion_curve``: per frame t, the
  mean |x_t − x_0| over the cine's most-moving pixels (top ``moving_fraction`` by temporal standard
  deviation, chosen in that cine itself, so generated and real anatomy need not overlap), circularly
  smoothed [1, 2, 1]/4. ``es_frame``: the frame farthest from end-diastole, i.e. the curve's peak, as the
  centre of the run of frames within 95% of the maximum around the argmax (sub-frame; the peak is a
  plateau through isovolumic relaxation).
  Agreement: circular mean absolute error in frames between generated and real ES frames, and Pearson r
  across items. Checked on the phantom, whose ES is known (end of ejection = end of the T wave): on the
  150 paired cines of the demo store the estimate has r = 0.96–0.97 with the truth, a bias of −0.6 to
  −0.8 frames and 0.34 frames MAE once the bias is removed; VAE reconstructions of the test cines (decoded
  like generated ones) agree with their real cines to 0.17 frames (r = 0.99), so the bias cancels. The
  true ES frames spread by only 1.6–1.7 frames (SD): a constant scores ≈ 1.3 frames.
- **Motion-curve correlation.** Pearson r between the generated and the real motion curve (the shape of
  the whole volume–time course: ejection, filling, atrial kick), mean over items.
- **ECG-swap sensitivity.** mean |G(own ECG) − G(other ECG)| with the same noise, over mean
  |real_i − real_j| of the same pairs: 0 = the ECG changes nothing; real subjects differ by 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ecgflowcmr.signal.phase import PEAK_LEVEL, peak_centre, smooth_circular

MOVING_FRACTION = 0.2


# --------------------------------------------------------------------------------------------------
# Per-cine motion
# --------------------------------------------------------------------------------------------------


def _as_batch(cines: np.ndarray) -> np.ndarray:
    """(T, H, W) or (N, T, H, W) → float32 (N, T, H, W)."""
    cines = np.asarray(cines, dtype=np.float32)
    if cines.ndim == 3:
        cines = cines[None]
    if cines.ndim != 4 or cines.shape[1] < 3:
        raise ValueError(f"expected cines (T, H, W) or (N, T, H, W) with T ≥ 3, got {cines.shape}")
    return cines


def motion_curve(cines: np.ndarray, moving_fraction: float = MOVING_FRACTION) -> np.ndarray:
    """(N, T, H, W) or (T, H, W) in [0, 1] → (N, T): mean |x_t − x_0| over each cine's most-moving pixels,
    circularly smoothed with [1, 2, 1]/4 (the cine covers one R-R, so frame T−1 neighbours frame 0)."""
    if not 0 < moving_fraction <= 1:
        raise ValueError(f"moving_fraction must be in (0, 1], got {moving_fraction}")
    x = _as_batch(cines)
    n, t = x.shape[:2]
    flat = x.reshape(n, t, -1)  # (N, T, P)
    spread = flat.std(axis=1)  # (N, P)
    k = max(1, round(moving_fraction * spread.shape[1]))
    moving = np.argpartition(spread, -k, axis=1)[:, -k:]  # (N, k) pixel indices
    picked = np.take_along_axis(flat, moving[:, None, :], axis=2)  # (N, T, k)
    curve = np.abs(picked - picked[:, :1]).mean(axis=2)  # (N, T)
    return smooth_circular(curve)


def es_frame(cines: np.ndarray, moving_fraction: float = MOVING_FRACTION, level: float = PEAK_LEVEL) -> np.ndarray:
    """(N, T, H, W) or (T, H, W) → float64 (N,): the end-systolic frame (sub-frame), from ``motion_curve``.

    The curve is flat-topped (end-systole lasts through isovolumic relaxation), so its argmax alone jumps
    between the plateau's frames with the noise: take the circular centroid of the contiguous run of frames
    around the argmax whose value is ≥ ``level`` · max.
    """
    return peak_centre(motion_curve(cines, moving_fraction), level)


def circular_frame_error(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """|a − b| in frames on a cycle of ``frames`` frames (frame T−1 is one frame from frame 0)."""
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) % frames
    return np.minimum(d, frames - d)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two 1-D arrays; 0 if either is constant."""
    return float(curve_correlation(np.asarray(a, dtype=np.float64)[None], np.asarray(b, dtype=np.float64)[None])[0])


def curve_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r per row between curves a, b (N, T); 0 where either curve is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    return np.where(denom > 0, (a * b).sum(axis=1) / np.maximum(denom, 1e-12), 0.0)


# --------------------------------------------------------------------------------------------------
# Generated vs real, own vs swapped ECG
# --------------------------------------------------------------------------------------------------


def timing_metrics(curves: dict[str, np.ndarray], partner: np.ndarray, curve_definition: str,
                   curve_name: str = "motion_curve") -> dict[str, Any]:
    """ES-frame and curve agreement from per-frame curves whose peak is end-systole.

    curves: ``real``, ``own`` (generated from the own ECG), each (N, T), and ``swapped`` (same noise, the ECG
    of subject ``partner[i]``), (M, T) for the first M ≤ N items (``evaluate --max-baseline``; partner (M,)
    indexes all N); ``curve_definition`` says what the curve is (it goes into every definition); the curve
    correlations are named ``<curve_name>_corr_own_ecg`` / ``…_swapped_ecg``.
    """
    partner = np.asarray(partner, dtype=np.int64)
    n, t = curves["real"].shape
    m = len(curves["swapped"])
    if curves["own"].shape != (n, t) or curves["swapped"].shape != (m, t) or not 2 <= m <= n:
        raise ValueError(f"curve shapes differ: {[curves[k].shape for k in ('real', 'own', 'swapped')]}")
    if partner.shape != (m,) or (partner == np.arange(m)).any() or partner.min() < 0 or partner.max() >= n:
        raise ValueError("partner must give, for each of N ≥ 2 items, another item's index")
    es = {name: peak_centre(curves[name]) for name in ("real", "own", "swapped")}
    constant = float(np.median(es["real"]))
    err = {
        "own": circular_frame_error(es["own"], es["real"], t),
        "swapped": circular_frame_error(es["swapped"], es["real"][:m], t),
        "partner_real": circular_frame_error(es["real"][partner], es["real"][:m], t),
        "constant": circular_frame_error(np.full(n, constant), es["real"], t),
    }
    corr_own = curve_correlation(curves["own"], curves["real"])
    corr_swapped = curve_correlation(curves["swapped"], curves["real"][:m])
    curve = (f"ES frame = peak of the curve over the {t} frames (frame 0 = R-peak = ED), {curve_definition}; "
             f"peak = centre of the run ≥ {PEAK_LEVEL:g}·max around the argmax; errors are circular, in frames; "
             f"N = {n} test items")
    swap = "the ECG of another test subject (item i ← partner i), same sampling noise"
    if m < n:
        swap += f", over the first {m} of the {n} test items (--max-baseline)"
    return {
        "es_frame_mae_own_ecg": {
            "value": float(err["own"].mean()),
            "definition": f"mean |ES(generated from own ECG) − ES(real)|; {curve}"},
        "es_frame_mae_swapped_ecg": {
            "value": float(err["swapped"].mean()),
            "definition": f"as es_frame_mae_own_ecg, generated from {swap}: above the own-ECG value when the "
                          f"ECG controls the timing"},
        "es_frame_mae_constant": {
            "value": float(err["constant"].mean()),
            "definition": f"baseline without any ECG: predict the median real ES frame ({constant:g}) for every "
                          f"item"},
        "es_frame_mae_other_real": {
            "value": float(err["partner_real"].mean()),
            "definition": "real-vs-real reference: |ES(real of the partner subject) − ES(real)|, what a "
                          f"generator that copied the swapped subject exactly would score; N = {m}"},
        "es_frame_corr_own_ecg": {
            "value": _pearson(es["own"], es["real"]),
            "definition": "Pearson r across items between the ES frame generated from the own ECG and the real "
                          "one: 0 when the timing does not follow the ECG (a constant scores 0)"},
        "es_frame_corr_swapped_ecg": {
            "value": _pearson(es["swapped"], es["real"][:m]),
            "definition": f"as es_frame_corr_own_ecg, generated from {swap}"},
        "es_frame_real_spread": {
            "value": float(np.std(es["real"])),
            "definition": "standard deviation of the real ES frames across the items (how much timing there "
                          "is to get right)"},
        f"{curve_name}_corr_own_ecg": {
            "value": float(corr_own.mean()),
            "definition": f"mean over items of Pearson r between the curve of the cine generated from the own "
                          f"ECG and that of the real cine (shape of the volume–time course); {curve_definition}"},
        f"{curve_name}_corr_swapped_ecg": {
            "value": float(corr_swapped.mean()),
            "definition": f"as {curve_name}_corr_own_ecg, generated from {swap}"},
        "conditioning_items": {"value": n, "definition": "test items in the conditioning measures"},
    }


def conditioning_metrics(real: np.ndarray, own: np.ndarray, swapped: np.ndarray, partner: np.ndarray,
                         moving_fraction: float = MOVING_FRACTION) -> dict[str, Any]:
    """Conditioning fidelity of generated cines read from pixel motion, each number with its definition.

    real (N, T, H, W): the subjects' real cines in [0, 1]; own: generated from each subject's own ECG;
    swapped: generated with the same noise from the ECG of subject ``partner[i]`` (an index into real,
    ≠ i). Needs N ≥ 2. :func:`timing_metrics` on ``motion_curve``s plus the pixel-level swap sensitivity.
    """
    real, own, swapped = _as_batch(real), _as_batch(own), _as_batch(swapped)
    partner = np.asarray(partner, dtype=np.int64)
    if own.shape != real.shape or swapped.shape != real.shape:
        raise ValueError(f"shapes differ: real {real.shape}, own {own.shape}, swapped {swapped.shape}")
    curves = {name: motion_curve(x, moving_fraction) for name, x in (("real", real), ("own", own),
                                                                      ("swapped", swapped))}
    described = (f"the motion curve: mean |x_t − x_0| over the {moving_fraction:.0%} most-moving pixels of that "
                 f"cine (temporal std), circular [1,2,1]/4 smoothing")
    out = timing_metrics(curves, partner, described)
    change = float(np.abs(own - swapped).mean())
    real_pairs = float(np.abs(real - real[partner]).mean())
    out["ecg_swap_sensitivity"] = {
        "value": change / real_pairs if real_pairs > 0 else float("nan"),
        "definition": f"mean |G(own ECG) − G(swapped ECG)| ({change:.4f}) over mean |real_i − real_partner(i)| "
                      f"({real_pairs:.4f}), pixels in [0, 1], same noise: 0 = the ECG changes nothing, "
                      f"1 = as much as between two real subjects"}
    out["conditioning_items"] = out.pop("conditioning_items")  # keep the old key order
    return out


def swap_partners(n: int) -> np.ndarray:
    """Item i takes the ECG of item i − 1 (cyclic): (n,) int64, never i itself for n ≥ 2."""
    return (np.arange(n) - 1) % n


def measure_conditioning(pipe: Any, ecgs: np.ndarray, seeds: list[int], real: np.ndarray,
                         own: np.ndarray | None = None, batch_size: int = 8,
                         rpeaks: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Generate from swapped ECGs (and from the own ECGs unless ``own`` is given), then ``conditioning_metrics``.

    pipe: a ``Pipeline`` (``generate_batch(x, seed=[...])``); ecgs (N, 12, 5000) mV; seeds: the noise seed of
    each item (item i keeps its seed when it gets the ECG of ``swap_partners(N)[i]``); real (N, 50, 96, 96)
    in [0, 1]; own: the cines already generated from the own ECGs with these seeds; rpeaks: each ECG's
    R-peaks as ``read_ecg`` carried them (None: the pipeline finds them). Every ECG must align.
    """
    import torch

    ecgs = np.asarray(ecgs, dtype=np.float32)
    partner = swap_partners(len(ecgs))

    def run(order: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(order), batch_size):
            idx = np.arange(start, min(start + batch_size, len(order)))
            peaks = None if rpeaks is None else [rpeaks[j] for j in order[idx]]
            frames, valid = pipe.generate_batch(torch.from_numpy(ecgs[order[idx]]), seed=[seeds[i] for i in idx],
                                                rpeaks=peaks)
            if not valid.all():
                raise ValueError(f"items {idx[~valid].tolist()}: no usable cardiac cycle in the ECG")
            parts.append(frames)
        return np.concatenate(parts)

    swapped = run(partner)
    own = run(np.arange(len(ecgs))) if own is None else own
    return conditioning_metrics(real, own, swapped, partner)
