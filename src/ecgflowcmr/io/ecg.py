"""12-lead ECG: every supported format → the canonical ECG, writers, quality flags.

The per-format decoders (file → the record as written) live in ``ecg_decoders.py``; this module
dispatches to them (``_decode``) and owns the canonical form and its rules.

Canonical ECG (docs/architecture.md): float32 (12, 5000) in mV at 500 Hz (10 s), leads in ``LEADS`` order.

Rules applied by :func:`read_ecg`, in this order (each change is written to ``CanonicalECG.flags``):

1. Lead names are read from the file and matched case-insensitively (``AVR`` = ``aVR``, ``Lead I
   (Einthoven)`` = ``I``, ``DII`` = ``II``). An unknown or duplicated name is an error.
2. Units come from the file (µV, mV or V per the header / ``Resolution`` / ``LeadAmplitudeUnits``) → mV.
3. NaN (invalid) samples: gaps of at most ``MAX_NAN_GAP_S`` (20 ms) per lead are filled by linear
   interpolation and flagged; a longer gap is an error. Never silently zeroed.
4. Missing limb leads III, aVR, aVL, aVF are derived from I and II (Einthoven/Goldberger) and flagged;
   any other missing lead is an error.
5. A flat lead (peak-to-peak < ``FLAT_PEAK_TO_PEAK_MV``) or an amplitude above ``MAX_AMPLITUDE_MV``
   (99.9th percentile of |x − median| in any lead, so a few spike samples are tolerated) is an error.
6. A record shorter than ``MIN_DURATION_S`` (5 s) is an error.
7. Resampled from the file's own rate to 500 Hz (polyphase, ``scipy.signal.resample_poly``), then the
   first 10 s kept, or a shorter record zero-padded at the end (``valid_samples`` says where real data
   stops). Time is never stretched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.canonical import FS, LEADS, N_SAMPLES
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.ecg_decoders import (
    _decode_dicom,
    _decode_muse_xml,
    _decode_numpy,
    _decode_ukb_xml,
    _decode_wfdb,
    _Decoded,
)

MAX_NAN_GAP_S = 0.020
"""Longest run of invalid samples (per lead) repaired by linear interpolation; longer → error."""
FLAT_PEAK_TO_PEAK_MV = 0.01
"""A lead whose peak-to-peak is below this (10 µV) carries no ECG: error."""
MAX_AMPLITUDE_MV = 10.0
"""Above this |x − median| (99.9th percentile) the units are wrong or the record is artefact: error."""
MIN_DURATION_S = 5.0
"""Shorter records are refused; from here up to 10 s they are zero-padded and flagged."""
MIN_FS, MAX_FS = 100.0, 20000.0
"""Accepted source sampling rates (Hz)."""
SWAP_RESIDUAL = 0.25
"""Einthoven/Goldberger residual (relative RMS) above which leads look swapped or mislabelled."""
HEART_RATE_RANGE_BPM = (30.0, 150.0)
MIN_BEATS = 4
CLIP_RUN_S = 0.016
"""A run this long (8 samples at 500 Hz) pinned at a lead's extreme value counts as clipping."""

_LEAD_ALIASES: dict[str, str] = {name.lower(): name for name in LEADS} | {"di": "I", "dii": "II", "diii": "III"}


@dataclass
class CanonicalECG:
    """A 12-lead ECG in canonical form plus what we learned reading it.

    ``signal``: float32 (12, 5000), mV, 500 Hz, ``LEADS`` order.
    """

    signal: np.ndarray
    path: str = ""
    format: str = ""
    source_fs: float = float(FS)
    source_samples: int = N_SAMPLES
    leads_found: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    """Quality flags and what was done to the record (e.g. ``resampled 250→500 Hz``, ``padded 7.0→10 s``)."""
    valid_samples: int = N_SAMPLES
    """Samples ``signal[:, :valid_samples]`` come from the record; the rest is zero padding."""
    rpeaks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """R-peaks (``signal.phase.find_rpeaks`` on the real part), found once here and carried: the phase labels,
    the PA-MAE's R-peak fallback, the frame interval of generated cines and ``show`` use them."""
    quality: dict[str, Any] = field(default_factory=dict)
    """:func:`ecg_quality` of the record's real (unpadded) part."""




# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------


def read_ecg(path: str | Path, *, fs: float | None = None, format: str | None = None) -> CanonicalECG:
    """Read any supported ECG file into the canonical ECG (rules in this module's docstring).

    ``format``: one of ``formats.ECG_FORMATS`` to skip sniffing. ``fs``: the sampling rate in Hz, required
    for ``.npy``/``.npz`` (which carry none); for other formats it must agree with the file's own rate.
    Raises :class:`InputError` (one line naming the file) for anything unusable.
    """
    decoded = _decode(Path(path), fs=fs, format=format)
    return _canonicalise(decoded, Path(path))


def ecg_quality(signal: np.ndarray, fs: float = FS, rpeaks: np.ndarray | None = None) -> dict[str, Any]:
    """Quality measures and flags of a (12, N) ECG in ``LEADS`` order, mV (NaN allowed).

    Keys: ``flags`` (list of human-readable problems, empty when none), ``nonfinite_samples``, ``flat_leads``,
    ``clipped_leads``, ``einthoven_residual`` = RMS(II − I − III) / RMS(I, II, III), ``goldberger_residual`` =
    RMS(aVR + aVL + aVF) / RMS(aVR, aVL, aVF), ``augmented_residual`` = the largest of RMS(aVR + (I + II)/2),
    RMS(aVL − (I − III)/2), RMS(aVF − (II + III)/2) each over its lead's RMS (catches an aVL/aVF swap, which the
    Goldberger sum cannot), ``max_amplitude_mv`` (99.9th percentile of |x − median|), ``heart_rate_bpm``
    (60·fs / median RR, None with < 2 peaks), ``n_beats``. R-peaks are detected on lead II unless given.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(LEADS):
        raise ValueError(f"expected a (12, N) ECG in canonical lead order, got shape {x.shape}")
    flags: list[str] = []
    finite = np.isfinite(x)
    nonfinite = int((~finite).sum())
    if nonfinite:
        flags.append(f"{nonfinite} non-finite samples")
    rows = [row if ok.all() else row[ok] for row, ok in zip(x, finite)]  # finite samples per lead
    xc = np.where(finite, x, np.nan) - np.array([[row.mean() if row.size else np.nan] for row in rows])
    ptp = np.array([np.ptp(row) if row.size else 0.0 for row in rows])
    flat = [LEADS[i] for i in np.flatnonzero(ptp < FLAT_PEAK_TO_PEAK_MV)]
    if flat:
        flags.append(f"flat lead(s) {' '.join(flat)}")
    clipped = [LEADS[i] for i in np.flatnonzero(_clipped(x, fs)) if LEADS[i] not in flat]
    if clipped:
        flags.append(f"clipping in lead(s) {' '.join(clipped)}")

    lead = {name: xc[i] for i, name in enumerate(LEADS)}
    einthoven = _relative_rms(lead["II"] - lead["I"] - lead["III"], lead["I"], lead["II"], lead["III"])
    goldberger = _relative_rms(lead["aVR"] + lead["aVL"] + lead["aVF"], lead["aVR"], lead["aVL"], lead["aVF"])
    augmented = max(
        _relative_rms(lead["aVR"] + (lead["I"] + lead["II"]) / 2, lead["aVR"]),
        _relative_rms(lead["aVL"] - (lead["I"] - lead["III"]) / 2, lead["aVL"]),
        _relative_rms(lead["aVF"] - (lead["II"] + lead["III"]) / 2, lead["aVF"]),
    )
    if max(einthoven, goldberger, augmented) > SWAP_RESIDUAL:
        flags.append(
            f"possible swapped leads (Einthoven residual {einthoven:.2f}, Goldberger {goldberger:.2f}, "
            f"augmented {augmented:.2f} > {SWAP_RESIDUAL})"
        )

    max_amp = float(max(_robust_amplitude(row) for row in rows))
    if max_amp > MAX_AMPLITUDE_MV:
        flags.append(f"implausible amplitude {max_amp:.1f} mV > {MAX_AMPLITUDE_MV:g} mV (wrong units?)")

    if rpeaks is None:
        from ecgflowcmr.signal.phase import find_rpeaks

        rpeaks = find_rpeaks(x, fs)
    rpeaks = np.asarray(rpeaks)
    heart_rate = float(60.0 * fs / np.median(np.diff(rpeaks))) if rpeaks.size >= 2 else None
    lo, hi = HEART_RATE_RANGE_BPM
    if heart_rate is not None and not lo <= heart_rate <= hi:
        flags.append(f"heart rate {heart_rate:.0f} bpm outside {lo:.0f}–{hi:.0f} bpm")
    if rpeaks.size < MIN_BEATS:
        flags.append(f"{rpeaks.size} beats detected (< {MIN_BEATS})")
    return {
        "flags": flags,
        "nonfinite_samples": nonfinite,
        "flat_leads": flat,
        "clipped_leads": clipped,
        "einthoven_residual": round(einthoven, 4),
        "goldberger_residual": round(goldberger, 4),
        "augmented_residual": round(augmented, 4),
        "max_amplitude_mv": round(max_amp, 4),
        "heart_rate_bpm": None if heart_rate is None else round(heart_rate, 2),
        "n_beats": int(rpeaks.size),
    }


def inspect_ecg(path: str | Path, *, fs: float | None = None, format: str | None = None) -> dict[str, Any]:
    """Describe an ECG file (JSON-serialisable); raises InputError only when the file cannot be parsed at all.

    Keys:
      ``path``; ``format`` (wfdb | ukb_xml | muse_xml | dicom_ecg | npy_ecg);
      ``leads`` (names as found in the file, in file order); ``sampling_rate_hz`` (the file's own);
      ``duration_s`` and ``samples`` (the file's own, before resampling/padding);
      ``heart_rate_bpm`` (from lead II R-peaks, null if < 2 found); ``rpeak_count``;
      ``quality`` (list of quality flags, empty = none found: non-finite samples, flat lead, clipping,
      possible swapped leads from the Einthoven/Goldberger residuals, implausible amplitude, heart rate
      outside 30–150 bpm, fewer than 4 beats);
      ``residuals`` ({einthoven, goldberger, augmented}: relative RMS, ≈ 0 for consistent limb leads);
      ``max_amplitude_mv``;
      ``readable`` (true when ``read_ecg`` accepts the file); ``error`` (its one-line reason when not, else null);
      ``flags`` (what ``read_ecg`` did: resampling, padding/cropping, derived leads, repaired gaps, assumptions).
    """
    path = Path(path)
    decoded = _decode(path, fs=fs, format=format)
    duration = decoded.signal.shape[1] / decoded.fs
    error = None
    try:
        ecg = _canonicalise(decoded, path)
        quality, done = ecg.quality, [f for f in ecg.flags if f not in ecg.quality["flags"]]
    except InputError as err:
        error = err.problem
        done = decoded.flags
        if MIN_FS <= decoded.fs <= MAX_FS:
            loose = _loose_canonical(decoded)  # as far as it goes: unknown leads dropped, missing ones NaN
            quality = ecg_quality(loose, decoded.fs)
        else:  # no filter or R-peak detector works at such a rate: nothing more to measure
            quality = {"flags": [error], "heart_rate_bpm": None, "n_beats": 0, "max_amplitude_mv": None,
                       "einthoven_residual": None, "goldberger_residual": None, "augmented_residual": None}
    return {
        "path": str(path),
        "format": decoded.format,
        "leads": list(decoded.names),
        "sampling_rate_hz": float(decoded.fs),
        "duration_s": round(float(duration), 4),
        "samples": int(decoded.signal.shape[1]),
        "heart_rate_bpm": quality["heart_rate_bpm"],
        "rpeak_count": quality["n_beats"],
        "quality": list(quality["flags"]),
        "residuals": {k: quality[f"{k}_residual"] for k in ("einthoven", "goldberger", "augmented")},
        "max_amplitude_mv": quality["max_amplitude_mv"],
        "readable": error is None,
        "error": error,
        "flags": list(done),
    }


def write_wfdb(record: str | Path, signal_mv: np.ndarray, fs: float = FS, leads: tuple[str, ...] = LEADS) -> None:
    """Write a WFDB record (``record.hea`` + ``record.dat``, format 16, 1000 adu/mV = 1 µV per LSB).

    ``signal_mv``: (n_leads, n_samples) in mV. The bytes equal ``wfdb.wrsamp``'s for the same record
    (tests compare them) but are written directly, ~100× faster, each file under a temporary name and
    then renamed. Deterministic for identical input.
    """
    from ecgflowcmr.atomic import atomic_file

    record = Path(record)
    digital = np.round(np.asarray(signal_mv, dtype=np.float64).T * 1000.0)
    if np.abs(digital).max(initial=0) >= 32767:
        raise ValueError(f"{record}: signal exceeds ±32.7 mV, cannot be stored at 1 µV/LSB in format 16")
    d = digital.astype(np.int16)
    checksums = d.astype(np.int64).sum(axis=0) % 65536
    fs_text = f"{fs:g}"
    lines = [f"{record.name} {d.shape[1]} {fs_text} {d.shape[0]}"]
    for k, lead in enumerate(leads):
        lines.append(f"{record.name}.dat 16 1000.0(0)/mV 16 0 {int(d[0, k])} {int(checksums[k])} 0 {lead}")
    with atomic_file(record.with_name(record.name + ".dat")) as tmp:
        tmp.write_bytes(d.astype("<i2").tobytes())
    with atomic_file(record.with_name(record.name + ".hea")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def canonical_lead(name: str) -> str | None:
    """The ``LEADS`` name for a lead label as files write it, or None if unknown.

    Case-insensitive; ignores a ``Lead``/``MDC_ECG_LEAD_`` prefix and a parenthesised note
    (``Lead I (Einthoven)`` → ``I``); ``DI``/``DII``/``DIII`` → ``I``/``II``/``III``.
    """
    s = re.sub(r"\(.*?\)", "", str(name)).strip().lower()
    s = re.sub(r"^(mdc_ecg_lead_|lead)[\s_]*", "", s).replace(" ", "")
    return _LEAD_ALIASES.get(s)


# ----------------------------------------------------------------------------------------------------------
# canonicalisation
# ----------------------------------------------------------------------------------------------------------


def _canonicalise(d: _Decoded, path: Path) -> CanonicalECG:
    from ecgflowcmr.signal.phase import find_rpeaks

    flags = list(d.flags)
    if not (MIN_FS <= d.fs <= MAX_FS):
        raise InputError(path, f"sampling rate {d.fs:g} Hz outside {MIN_FS:g}–{MAX_FS:g} Hz")
    rows: dict[str, np.ndarray] = {}
    for name, row in zip(d.names, d.signal):
        lead = canonical_lead(name)
        if lead is None:
            raise InputError(path, f"unknown lead name {name!r} (expected {' '.join(LEADS)})")
        if lead in rows:
            raise InputError(path, f"duplicate lead {lead} (names as found: {' '.join(d.names)})")
        rows[lead] = row
    for lead, row in rows.items():
        rows[lead] = _repair_nans(row, d.fs, lead, path, flags)
    derivable = {"III", "aVR", "aVL", "aVF"} - set(rows)
    if derivable and {"I", "II"} <= set(rows):
        _derive_limb_leads(rows)
        derived = [lead for lead in LEADS if lead in derivable]
        flags.append(f"derived {' '.join(derived)} from I II ({len(d.names)}-lead {d.format})")
    missing = [lead for lead in LEADS if lead not in rows]
    if missing:
        raise InputError(path, f"missing lead(s) {' '.join(missing)} (found: {' '.join(d.names) or 'none'})")
    x = np.stack([rows[lead] for lead in LEADS])
    ptp = np.ptp(x, axis=1)
    if (ptp < FLAT_PEAK_TO_PEAK_MV).any():
        flat = " ".join(LEADS[i] for i in np.flatnonzero(ptp < FLAT_PEAK_TO_PEAK_MV))
        raise InputError(path, f"flat lead(s) {flat} (peak-to-peak < {FLAT_PEAK_TO_PEAK_MV * 1000:g} µV)")
    amplitude = np.array([_robust_amplitude(row) for row in x])
    if amplitude.max() > MAX_AMPLITUDE_MV:
        lead = LEADS[int(amplitude.argmax())]
        raise InputError(path, f"implausible amplitude {amplitude.max():.1f} mV in lead {lead} "
                               f"(> {MAX_AMPLITUDE_MV:g} mV: wrong units?)")  # fmt: skip
    n_source = x.shape[1]
    duration = n_source / d.fs
    if duration < MIN_DURATION_S:
        raise InputError(path, f"record is {duration:.2f} s long, shorter than the {MIN_DURATION_S:g} s minimum")

    if abs(d.fs - FS) > 1e-9:
        x = _resample(x, d.fs)
        flags.append(f"resampled {d.fs:g}→{FS} Hz")
    valid = min(x.shape[1], N_SAMPLES)
    if x.shape[1] > N_SAMPLES:
        flags.append(f"cropped {duration:.2f} s→10 s (first 10 s kept)")
    elif x.shape[1] < N_SAMPLES:
        flags.append(f"padded {duration:.2f} s→10 s (zeros after sample {valid})")
    signal = np.zeros((len(LEADS), N_SAMPLES), dtype=np.float32)
    signal[:, :valid] = x[:, :valid]

    rpeaks = find_rpeaks(signal[:, :valid], FS)
    quality = ecg_quality(signal[:, :valid], FS, rpeaks=rpeaks)
    flags.extend(quality["flags"])
    return CanonicalECG(
        signal=signal,
        path=str(path),
        format=d.format,
        source_fs=float(d.fs),
        source_samples=int(n_source),
        leads_found=list(d.names),
        flags=flags,
        valid_samples=int(valid),
        rpeaks=rpeaks,
        quality=quality,
    )


def _repair_nans(row: np.ndarray, fs: float, lead: str, path: Path, flags: list[str]) -> np.ndarray:
    bad = ~np.isfinite(row)
    if not bad.any():
        return row
    if bad.all():
        raise InputError(path, f"lead {lead} holds no valid samples")
    edges = np.diff(np.concatenate(([0], bad.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int((ends - starts).max())
    limit = max(1, int(MAX_NAN_GAP_S * fs + 1e-9))
    if longest > limit:
        raise InputError(path, f"lead {lead} has {int(bad.sum())} NaN/invalid samples, longest gap "
                               f"{longest / fs * 1000:.0f} ms > {MAX_NAN_GAP_S * 1000:g} ms repair limit")  # fmt: skip
    idx = np.arange(row.size)
    row = row.copy()
    row[bad] = np.interp(idx[bad], idx[~bad], row[~bad])
    flags.append(f"interpolated {int(bad.sum())} NaN samples in lead {lead} (gaps ≤ {longest / fs * 1000:.0f} ms)")
    return row


def _derive_limb_leads(rows: dict[str, np.ndarray]) -> None:
    """Einthoven III = II − I; Goldberger aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2 (only the missing)."""
    i, ii = rows["I"], rows["II"]
    derived = {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    for lead, value in derived.items():
        rows.setdefault(lead, value)


def _resample(x: np.ndarray, fs: float) -> np.ndarray:
    from scipy.signal import resample_poly

    ratio = (Fraction(FS) / Fraction(fs).limit_denominator(10_000)).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=1, padtype="line")


def _loose_canonical(d: _Decoded) -> np.ndarray:
    """(12, n) in ``LEADS`` order for quality reporting of a refused file: unknown/duplicate/missing → NaN."""
    out = np.full((len(LEADS), d.signal.shape[1]), np.nan)
    for name, row in zip(d.names, d.signal):
        lead = canonical_lead(name)
        if lead is not None:
            out[LEADS.index(lead)] = row
    return out


def _robust_amplitude(row: np.ndarray) -> float:
    """99.9th percentile of |x − median| (mV): the peak deflection, ignoring a few spike samples."""
    if row.size == 0:
        return 0.0
    half = row.size // 2
    median = np.partition(row, half)[half]  # np.median/percentile cost ~10× more in overhead
    k = int(0.999 * (row.size - 1))
    return float(np.partition(np.abs(row - median), k)[k])


def _clipped(x: np.ndarray, fs: float) -> np.ndarray:
    """(n_leads,) bool: a run of ``CLIP_RUN_S`` or longer pinned at the lead's own maximum or minimum."""
    run = max(3, round(CLIP_RUN_S * fs))
    if x.shape[1] < run:
        return np.zeros(x.shape[0], dtype=bool)
    with np.errstate(invalid="ignore"):
        pinned = (x == np.fmax.reduce(x, axis=1, keepdims=True)) | (x == np.fmin.reduce(x, axis=1, keepdims=True))
    count = np.concatenate([np.zeros((x.shape[0], 1), dtype=np.int64), np.cumsum(pinned, axis=1)], axis=1)
    return ((count[:, run:] - count[:, :-run]) == run).any(axis=1)


def _relative_rms(residual: np.ndarray, *leads: np.ndarray) -> float:
    """RMS(residual) / RMS(leads pooled), over finite samples; 0 when undefined."""
    residual = residual[np.isfinite(residual)]
    pooled = np.concatenate(leads)
    pooled = pooled[np.isfinite(pooled)]
    if residual.size == 0 or pooled.size == 0:
        return 0.0
    den = np.sqrt(np.mean(pooled**2))
    return float(np.sqrt(np.mean(residual**2)) / den) if den > 1e-9 else 0.0


# ----------------------------------------------------------------------------------------------------------
# format dispatch: file → _Decoded (names as written, mV, the file's own rate), decoded by ecg_decoders.py
# ----------------------------------------------------------------------------------------------------------


def _decode(path: Path, *, fs: float | None, format: str | None) -> _Decoded:
    from ecgflowcmr.io.formats import ECG_FORMATS, sniff

    fmt = format or sniff(path)
    if fmt not in ECG_FORMATS:
        raise InputError(path, f"{fmt} is not an ECG format (expected one of {', '.join(ECG_FORMATS)})")
    if fs is not None and not (np.isfinite(fs) and fs > 0):
        raise InputError(path, f"fs={fs} is not a positive sampling rate")
    decoders = {"wfdb": _decode_wfdb, "ukb_xml": _decode_ukb_xml, "muse_xml": _decode_muse_xml,
                "dicom_ecg": _decode_dicom}  # fmt: skip
    if fmt == "npy_ecg":
        decoded = _decode_numpy(path, fs, LEADS)
        if not (np.isfinite(decoded.fs) and decoded.fs > 0):
            raise InputError(path, f"sampling rate {decoded.fs:g} Hz is not a positive number")
        return decoded
    decoded = decoders[fmt](path)
    if not (np.isfinite(decoded.fs) and decoded.fs > 0):
        raise InputError(path, f"sampling rate {decoded.fs:g} Hz is not a positive number")
    if fs is not None and abs(fs - decoded.fs) > 1e-6 * decoded.fs:
        raise InputError(path, f"the file says {decoded.fs:g} Hz but fs={fs:g} was given")
    if decoded.signal.ndim != 2 or decoded.signal.shape[1] == 0:
        raise InputError(path, "no samples in the record")
    return decoded

