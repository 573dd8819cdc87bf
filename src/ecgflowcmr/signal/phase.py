"""R-peaks and cardiac phase labels (docs/architecture.md, docs/decisions.md); end-systole on a cycle's curve.

Phase per ECG sample: float32 radians in [0, 2π), 0 at an R-peak, rising linearly to 2π at the next one;
NaN (unknown) before the first and after the last R-peak. Ours differs from the public code, which labels
those edges 0 (docs/decisions.md): an unknown phase is excluded from the phase loss instead of taught as ED.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from ecgflowcmr.canonical import FS, LEADS, N_SAMPLES

TWO_PI = 2.0 * np.pi
_BELOW_TWO_PI = np.nextafter(np.float32(TWO_PI), np.float32(0.0))  # float32(2π) rounds above 2π
_LEAD_II = LEADS.index("II")

QRS_BAND_HZ = (5.0, 30.0)
"""Band that keeps QRS slopes and suppresses P/T waves, baseline wander and mains hum."""
QRS_THRESHOLD = 0.3
"""A QRS is a peak of the pooled slope ≥ this fraction of its 98th percentile (the typical QRS height)."""
MIN_RR_S = 0.25
"""Peaks closer than this are one beat (≤ 240 bpm)."""
EDGE_S = 0.02
"""A QRS whose slope peak lies this close to the record's start or end is cut off: not counted."""
SEARCH_S = 0.06
"""The R-peak is sought within this distance of the QRS's slope peak."""


def detect_rpeaks(lead_ii: np.ndarray, fs: float = FS, *, leads: np.ndarray | None = None) -> np.ndarray:
    """R-peak sample indices (int64, increasing) located on ``lead_ii`` (N,) mV sampled at ``fs`` Hz.

    1. QRS detection (Pan–Tompkins-like, on ``leads`` (k, N) when given, e.g. all 12, else on lead II
       alone): each lead band-passed 5–30 Hz (2nd-order Butterworth, zero phase), slopes pooled as
       sqrt(Σ (dx/dt)²) (spatial velocity), smoothed over 40 ms; a QRS is a local maximum ≥ 0.3 × the
       curve's 98th percentile, ≥ 250 ms from the next, not within 20 ms of either end of the record.
    2. R-peak: the largest deflection of lead II (0.5–40 Hz, minus the local median) within ±60 ms of that
       QRS — the positive one, unless lead II's QRS is mainly negative (max < 0.3·|min|: a QS complex or
       an inverted lead), then the negative one. An extremum on the record's first or last sample is dropped.
    Pooling the leads matters where lead II's QRS is small next to its P wave or has a deep S (on the
    phantom NeuroKit2's lead-II detector, :func:`neurokit_rpeaks`, reaches a mean F1 of 0.94; this 0.998).
    NaN counts as 0; a flat record gives no peaks.
    """
    from scipy.signal import find_peaks, sosfiltfilt

    ii = np.nan_to_num(np.asarray(lead_ii, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    qrs_leads = ii[None, :] if leads is None else np.nan_to_num(np.asarray(leads, dtype=np.float64))
    n = ii.size
    if n < int(2 * fs) or qrs_leads.shape[-1] != n:
        return np.zeros(0, dtype=np.int64)
    band = sosfiltfilt(_butter_band(*QRS_BAND_HZ, fs), qrs_leads, axis=-1)
    slope = np.sqrt((np.diff(band, axis=-1, prepend=band[:, :1]) ** 2).sum(axis=0))
    width = max(1, int(0.04 * fs))
    slope = np.convolve(slope, np.full(width, 1.0 / width), mode="same")
    reference = np.percentile(slope, 98)
    if reference <= 1e-9:
        return np.zeros(0, dtype=np.int64)
    qrs, _ = find_peaks(slope, height=QRS_THRESHOLD * reference, distance=max(1, int(MIN_RR_S * fs)))
    edge = int(EDGE_S * fs)
    qrs = qrs[(qrs >= edge) & (qrs < n - edge)]

    ii = sosfiltfilt(_butter_band(0.5, min(40.0, 0.45 * fs), fs), ii)
    half, wide = int(SEARCH_S * fs), int(0.25 * fs)
    peaks = []
    for c in qrs:
        a, b = max(0, c - half), min(n, c + half + 1)
        w = ii[a:b] - np.median(ii[max(0, c - wide) : c + wide])
        peak = a + int(w.argmax() if w.max() >= 0.3 * -w.min() else w.argmin())
        if 0 < peak < n - 1:
            peaks.append(peak)
    return np.unique(np.asarray(peaks, dtype=np.int64))


@functools.lru_cache(maxsize=16)
def _butter_band(low: float, high: float, fs: float) -> np.ndarray:
    from scipy.signal import butter

    return butter(2, [low, high], btype="band", fs=fs, output="sos")


def neurokit_rpeaks(lead: np.ndarray, fs: float = FS) -> np.ndarray:
    """R-peaks by NeuroKit2 on one lead (``ecg_clean`` + the ``neurokit`` method behind ``nk.ecg_peaks``).

    An independent reference detector (e.g. to check the phantom's heart rate), not the one labels use.
    """
    import neurokit2 as nk  # heavy import (~3 s)

    x = np.nan_to_num(np.asarray(lead, dtype=np.float64))
    if x.size < int(2 * fs) or np.ptp(x) < 1e-6:
        return np.zeros(0, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neurokit warns on short/odd signals; an empty result says enough
        cleaned = nk.ecg_clean(x, sampling_rate=round(fs), method="neurokit")
        # it drops any peak within its 0.3 s refractory delay of sample 0: shift the record by that delay
        pad = int(0.3 * fs) + 1
        padded = np.concatenate([np.full(pad, cleaned[0]), cleaned])
        _, info = nk.ecg_peaks(padded, sampling_rate=round(fs), method="neurokit")
    peaks = np.asarray(info["ECG_R_Peaks"], dtype=np.int64) - pad
    return peaks[(peaks >= 0) & (peaks < x.size)]


def phase_from_rpeaks(rpeaks: np.ndarray, n: int = N_SAMPLES) -> np.ndarray:
    """Phase labels (n,) float32 in [0, 2π): 2π·(i − r_k)/(r_{k+1} − r_k) for r_k ≤ i < r_{k+1}.

    0 exactly at every R-peak (including the last); NaN before the first and after the last R-peak, and
    everywhere when fewer than two R-peaks fall inside [0, n). Peaks are sorted and de-duplicated.
    """
    r = np.unique(np.asarray(rpeaks, dtype=np.int64))
    r = r[(r >= 0) & (r < n)]
    phase = np.full(n, np.nan, dtype=np.float32)
    if r.size < 2:
        return phase
    i = np.arange(r[0], r[-1], dtype=np.int64)
    k = np.searchsorted(r, i, side="right") - 1  # r[k] ≤ i < r[k+1]
    value = (TWO_PI * (i - r[k]) / (r[k + 1] - r[k])).astype(np.float32)
    phase[r[0] : r[-1]] = np.minimum(value, _BELOW_TWO_PI)
    phase[r[-1]] = 0.0
    return phase


def rpeaks_from_labels(phase: np.ndarray) -> np.ndarray:
    """R-peak sample indices implied by per-sample phase labels (S,): where the known phase starts or wraps."""
    known = np.isfinite(phase)
    prev = np.concatenate([[np.nan], phase[:-1]])
    start = known & ~np.isfinite(prev)
    wrap = known & np.isfinite(prev) & (phase - prev < -np.pi)
    return np.flatnonzero(start | wrap)



def phase_labels(signal: np.ndarray, fs: float = FS) -> tuple[np.ndarray, np.ndarray]:
    """(phase (N,) float32, rpeaks int64) for a canonical ECG ``signal`` (12, N) mV.

    R-peaks on lead II, QRS complexes found on all 12 leads (:func:`detect_rpeaks`).
    """
    rpeaks = find_rpeaks(signal, fs)
    return phase_from_rpeaks(rpeaks, np.asarray(signal).shape[1]), rpeaks


def find_rpeaks(signal: np.ndarray, fs: float = FS) -> np.ndarray:
    """R-peaks (int64 sample indices) of an ECG ``signal`` (12, N) mV in ``LEADS`` order: QRS complexes
    found on all 12 leads, each R-peak located on lead II (:func:`detect_rpeaks`). The one way the
    package finds an ECG's R-peaks; ``read_ecg`` stores them in ``CanonicalECG.rpeaks``."""
    signal = np.asarray(signal)
    if signal.ndim != 2 or signal.shape[0] != len(LEADS):
        raise ValueError(f"expected a (12, N) ECG in canonical lead order, got shape {signal.shape}")
    return detect_rpeaks(signal[_LEAD_II], fs, leads=signal)


def rpeak_f1(true: np.ndarray, pred: np.ndarray, tol_samples: int = 10) -> float:
    """F1 of detected R-peaks against true ones; a pair matches when |t − p| ≤ ``tol_samples``.

    Greedy one-to-one matching, closest pairs first. F1 = 2·TP / (n_true + n_pred); 1.0 when both are
    empty. Default tolerance 10 samples = 20 ms at 500 Hz.
    """
    t = np.asarray(true, dtype=np.int64).ravel()
    p = np.asarray(pred, dtype=np.int64).ravel()
    if t.size + p.size == 0:
        return 1.0
    if t.size == 0 or p.size == 0:
        return 0.0
    dist = np.abs(t[:, None] - p[None, :])
    ti, pi = np.nonzero(dist <= tol_samples)
    order = np.argsort(dist[ti, pi], kind="stable")
    used_t = np.zeros(t.size, dtype=bool)
    used_p = np.zeros(p.size, dtype=bool)
    tp = 0
    for a, b in zip(ti[order], pi[order]):
        if not used_t[a] and not used_p[b]:
            used_t[a] = used_p[b] = True
            tp += 1
    return 2.0 * tp / (t.size + p.size)


# --------------------------------------------------------------------------------------------------
# End-systole on a cycle's curve (cines, latents)
# --------------------------------------------------------------------------------------------------

PEAK_LEVEL = 0.95
"""End-systole is the centre of the run of frames within this fraction of the curve's maximum (its plateau)."""


def smooth_circular(curves: np.ndarray) -> np.ndarray:
    """[1, 2, 1]/4 along axis 1 (frames), circular: the cine covers one R-R, frame T−1 neighbours frame 0."""
    return 0.25 * np.roll(curves, 1, axis=1) + 0.5 * curves + 0.25 * np.roll(curves, -1, axis=1)


def peak_centre(curves: np.ndarray, level: float = PEAK_LEVEL) -> np.ndarray:
    """(N, T) → (N,) in [0, T): mean frame index of the run ≥ level·max containing the argmax (circular)."""
    if not 0 < level <= 1:
        raise ValueError(f"level must be in (0, 1], got {level}")
    n, t = curves.shape
    out = np.empty(n)
    for i, curve in enumerate(curves):
        peak = int(curve.argmax())
        high = curve >= level * curve[peak]
        left = right = 0
        while left < t - 1 and high[(peak - left - 1) % t]:
            left += 1
        while left + right < t - 1 and high[(peak + right + 1) % t]:
            right += 1
        out[i] = (peak + (right - left) / 2) % t
    return out
