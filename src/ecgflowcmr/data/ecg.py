"""12-lead ECG: readers for every supported format → the canonical ECG, writers, quality flags.

Canonical ECG (DESIGN.md §2): float32 (12, 5000) in mV at 500 Hz (10 s), leads in ``LEADS`` order.

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

import base64
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.errors import InputError

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS: int = 500
"""Canonical sampling rate (Hz)."""
N_SAMPLES: int = 5000
"""Canonical length: 10 s at 500 Hz."""

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
_MV_PER_UNIT: dict[str, float] = {
    "nv": 1e-6, "nanovolt": 1e-6, "nanovolts": 1e-6,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
}  # fmt: skip


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
    """R-peaks on lead II as ``phase.phase_labels`` finds them; ``phase_from_rpeaks(rpeaks)`` reuses them."""
    quality: dict[str, Any] = field(default_factory=dict)
    """:func:`ecg_quality` of the record's real (unpadded) part."""


@dataclass
class _Decoded:
    """A record as the file holds it: (n_leads, n) float64 mV at ``fs``, names as written."""

    signal: np.ndarray
    fs: float
    names: list[str]
    format: str
    flags: list[str] = field(default_factory=list)


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
        from ecgflowcmr.data.phase import detect_rpeaks

        rpeaks = detect_rpeaks(x[LEADS.index("II")], fs, leads=x)
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
        loose = _loose_canonical(decoded)  # as far as it goes: unknown leads dropped, missing ones NaN
        quality = ecg_quality(loose, decoded.fs)
        done = decoded.flags
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
    from ecgflowcmr.data.phase import detect_rpeaks

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

    rpeaks = detect_rpeaks(signal[LEADS.index("II"), :valid], FS, leads=signal[:, :valid])
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
# format decoders: file → _Decoded (names as written, mV, the file's own rate)
# ----------------------------------------------------------------------------------------------------------


def _decode(path: Path, *, fs: float | None, format: str | None) -> _Decoded:
    from ecgflowcmr.data.formats import ECG_FORMATS, sniff

    fmt = format or sniff(path)
    if fmt not in ECG_FORMATS:
        raise InputError(path, f"{fmt} is not an ECG format (expected one of {', '.join(ECG_FORMATS)})")
    if fs is not None and not (np.isfinite(fs) and fs > 0):
        raise InputError(path, f"fs={fs} is not a positive sampling rate")
    decoders = {"wfdb": _decode_wfdb, "ukb_xml": _decode_ukb_xml, "muse_xml": _decode_muse_xml,
                "dicom_ecg": _decode_dicom}  # fmt: skip
    if fmt == "npy_ecg":
        return _decode_numpy(path, fs)
    decoded = decoders[fmt](path)
    if fs is not None and abs(fs - decoded.fs) > 1e-6 * decoded.fs:
        raise InputError(path, f"the file says {decoded.fs:g} Hz but fs={fs:g} was given")
    if decoded.signal.ndim != 2 or decoded.signal.shape[1] == 0:
        raise InputError(path, "no samples in the record")
    return decoded


def _mv_per_unit(unit: str, path: Path, where: str) -> float:
    key = unit.strip().lower().replace("μ", "µ")
    if key not in _MV_PER_UNIT:
        raise InputError(path, f"{where}: unknown amplitude unit {unit!r} (expected µV, mV or V)")
    return _MV_PER_UNIT[key]


def _decode_wfdb(path: Path) -> _Decoded:
    import wfdb

    base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    header = base.with_name(base.name + ".hea")
    if not header.exists():
        raise InputError(path, "WFDB header (.hea) not found")
    if header.stat().st_size == 0:
        raise InputError(header, "file is empty")
    fast = _read_wfdb_format16(header, path)
    if fast is not None:
        return fast
    try:
        rec = wfdb.rdrecord(str(base))
    except Exception as err:  # wfdb raises many types for broken headers/data
        raise InputError(path, f"unreadable WFDB record ({type(err).__name__}: {err})") from None
    if rec.p_signal is None or rec.n_sig == 0:
        raise InputError(path, "WFDB record holds no signals")
    if rec.sig_name is None or len(rec.sig_name) != rec.n_sig:
        raise InputError(path, "WFDB header names no leads (signal descriptions missing)")
    units = rec.units or ["mV"] * rec.n_sig  # WFDB's default unit is mV
    scale = np.array([_mv_per_unit(u or "mV", path, f"lead {n}") for u, n in zip(units, rec.sig_name)])
    signal = rec.p_signal.T.astype(np.float64) * scale[:, None]
    return _Decoded(signal, float(rec.fs), list(rec.sig_name), "wfdb")


def _read_wfdb_format16(header: Path, path: Path) -> _Decoded | None:
    """The common WFDB layout (PTB-XL, MIMIC-IV-ECG, our phantom) read with numpy, or None for anything else.

    Single segment, one ``.dat`` holding every signal in format 16, no skew/offset, every field written out;
    physical = (digital − baseline) / gain, the sentinel −32768 → NaN, exactly as ``wfdb.rdrecord`` gives.
    Exists because ``rdrecord`` spends ~60 ms parsing a header through pandas; tested equal to it.
    """
    try:
        lines = [ln.strip() for ln in header.read_text(encoding="latin-1").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return None
    record = lines[0].split()
    if len(record) < 4 or "/" in record[0] or not _is_number(record[2]) or not record[3].isdigit():
        return None
    n_sig, fs, n_samples = int(record[1]) if record[1].isdigit() else -1, float(record[2]), int(record[3])
    signal_lines = [ln.split(maxsplit=8) for ln in lines[1:]]
    if n_sig < 1 or len(signal_lines) != n_sig or any(len(f) != 9 or f[1] != "16" for f in signal_lines):
        return None
    files = {f[0] for f in signal_lines}
    spec = re.compile(r"^([-+0-9.eE]+)(?:\(([-0-9]+)\))?(?:/(\S+))?$")
    gains, baselines, units, names = [], [], [], []
    for f in signal_lines:
        m = spec.match(f[2])
        if m is None:
            return None
        gain = float(m.group(1)) or 200.0  # WFDB: gain 0 means the default 200
        gains.append(gain)
        baselines.append(int(m.group(2)) if m.group(2) is not None else int(f[4]))
        units.append(m.group(3) or "mV")
        names.append(f[8].strip())
    dat = header.with_name(next(iter(files)))
    if len(files) != 1 or not dat.exists():
        return None
    digital = np.fromfile(dat, dtype="<i2")
    if digital.size < n_samples * n_sig:
        raise InputError(dat, f"holds {digital.size // n_sig} samples per lead, the header says {n_samples} (truncated?)")
    digital = digital[: n_samples * n_sig].reshape(n_samples, n_sig).T
    scale = np.array([_mv_per_unit(u, path, f"lead {n}") / g for u, g, n in zip(units, gains, names)])
    signal = (digital - np.asarray(baselines, dtype=np.float64)[:, None]) * scale[:, None]
    signal[digital == -32768] = np.nan
    return _Decoded(signal, fs, names, "wfdb")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_xml(path: Path) -> Any:
    """Root element, parsed by defusedxml (entity expansion and external entities refused)."""
    import defusedxml
    import defusedxml.ElementTree as SafeET

    data = path.read_bytes()
    if not data.strip():
        raise InputError(path, "file is empty")
    try:
        return SafeET.fromstring(data)
    except defusedxml.DefusedXmlException as err:
        raise InputError(path, f"XML refused: {type(err).__name__} (entity declarations are not allowed)") from None
    except SafeET.ParseError as err:
        raise InputError(path, f"malformed or truncated XML ({err})") from None


def _float(text: str | None, path: Path, what: str) -> float:
    try:
        return float((text or "").strip())
    except ValueError:
        raise InputError(path, f"{what}: expected a number, got {text!r}") from None


def _decode_ukb_xml(path: Path) -> _Decoded:
    """UK Biobank CardioSoft XML (field 20205): ``StripData`` rhythm strip, counts × Resolution (µV/LSB)."""
    root = _parse_xml(path)
    strip = root.find(".//StripData")
    if strip is None:
        raise InputError(path, "CardioSoft XML without StripData (no rhythm strip)")
    rate = strip.find("SampleRate")
    if rate is None:
        raise InputError(path, "StripData has no SampleRate")
    fs = _float(rate.text, path, "StripData/SampleRate")
    if (rate.get("units") or "Hz").strip().lower() != "hz":
        raise InputError(path, f"StripData/SampleRate units {rate.get('units')!r}, expected Hz")
    res = strip.find("Resolution")
    if res is None or not (res.get("units") or "").strip():
        raise InputError(path, "StripData has no Resolution with units: cannot scale counts to mV")
    unit = re.sub(r"\s*per\s*lsb\s*$", "", res.get("units", ""), flags=re.IGNORECASE)
    mv_per_count = _float(res.text, path, "StripData/Resolution") * _mv_per_unit(unit, path, "Resolution")
    names, rows = [], []
    for wave in strip.findall("WaveformData"):
        name = (wave.get("lead") or "").strip()
        try:
            with warnings.catch_warnings():  # numpy only warns when the text does not parse to its end
                warnings.simplefilter("error", DeprecationWarning)
                counts = np.fromstring((wave.text or "").strip(), sep=",")  # text mode: not deprecated
        except (ValueError, DeprecationWarning):
            raise InputError(path, f"WaveformData lead {name!r}: non-numeric sample") from None
        names.append(name)
        rows.append(counts * mv_per_count)
    if not rows:
        raise InputError(path, "StripData holds no WaveformData")
    signal = _stack_equal(rows, names, path)
    total = strip.findtext("ChannelSampleCountTotal")
    if total is not None and int(_float(total, path, "ChannelSampleCountTotal")) != signal.shape[1]:
        raise InputError(path, f"leads hold {signal.shape[1]} samples but ChannelSampleCountTotal says "
                               f"{total.strip()} (truncated?)")  # fmt: skip
    return _Decoded(signal, fs, names, "ukb_xml")


def _decode_muse_xml(path: Path) -> _Decoded:
    """GE MUSE XML: the ``Rhythm`` Waveform, base64 little-endian int16 × LeadAmplitudeUnitsPerBit."""
    root = _parse_xml(path)
    rhythm = [w for w in root.iter("Waveform") if (w.findtext("WaveformType") or "").strip().lower() == "rhythm"]
    if not rhythm:
        raise InputError(path, "MUSE XML without a Rhythm Waveform")
    wave = rhythm[0]
    fs = _float(wave.findtext("SampleBase"), path, "Waveform/SampleBase")
    fs *= 10.0 ** _float(wave.findtext("SampleExponent") or "0", path, "Waveform/SampleExponent")
    names, rows = [], []
    for lead in wave.iter("LeadData"):
        name = (lead.findtext("LeadID") or "").strip()
        gain = _float(lead.findtext("LeadAmplitudeUnitsPerBit"), path, f"lead {name} LeadAmplitudeUnitsPerBit")
        unit = _mv_per_unit(lead.findtext("LeadAmplitudeUnits") or "", path, f"lead {name} LeadAmplitudeUnits")
        try:
            raw = base64.b64decode("".join((lead.findtext("WaveFormData") or "").split()), validate=True)
        except ValueError:
            raise InputError(path, f"lead {name}: WaveFormData is not valid base64") from None
        if len(raw) % 2:
            raise InputError(path, f"lead {name}: odd byte count {len(raw)} for int16 samples (truncated?)")
        counts = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        expected = lead.findtext("LeadSampleCountTotal")
        if expected is not None and int(_float(expected, path, "LeadSampleCountTotal")) != counts.size:
            raise InputError(path, f"lead {name}: {counts.size} samples, LeadSampleCountTotal says {expected}")
        names.append(name)
        rows.append(counts * gain * unit)
    if not rows:
        raise InputError(path, "Rhythm Waveform holds no LeadData")
    return _Decoded(_stack_equal(rows, names, path), fs, names, "muse_xml")


def _decode_dicom(path: Path) -> _Decoded:
    """DICOM Waveform Storage: the rhythm multiplex group, ``waveform_array`` (sensitivity applied) → mV."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise InputError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from None
    if "WaveformSequence" not in ds or not ds.WaveformSequence:
        raise InputError(path, "DICOM file holds no WaveformSequence (an image, not an ECG waveform)")
    groups = list(ds.WaveformSequence)

    def rank(item: Any) -> tuple[bool, float]:
        label = str(item.get("MultiplexGroupLabel", "")).upper()
        n, f = float(item.get("NumberOfWaveformSamples", 0)), float(item.get("SamplingFrequency", 0) or 1)
        return ("MEDIAN" not in label and "RHYTHM" in label, n / f)

    index = max(range(len(groups)), key=lambda i: rank(groups[i]))
    item = groups[index]
    if "SamplingFrequency" not in item:
        raise InputError(path, f"WaveformSequence[{index}] has no SamplingFrequency")
    names, scale = [], []
    for k, ch in enumerate(item.get("ChannelDefinitionSequence", [])):
        source = ch.get("ChannelSourceSequence", [])
        names.append(str(source[0].get("CodeMeaning", "")) if source else f"channel {k}")
        units = ch.get("ChannelSensitivityUnitsSequence", [])
        if "ChannelSensitivity" not in ch or not units:
            raise InputError(path, f"channel {names[-1]!r} has no ChannelSensitivity/units: counts cannot be scaled")
        scale.append(_mv_per_unit(str(units[0].get("CodeValue", "")), path, f"channel {names[-1]!r}"))
    try:
        arr = ds.waveform_array(index)
    except (AttributeError, KeyError, ValueError) as err:
        raise InputError(path, f"WaveformSequence[{index}] unreadable ({err})") from None
    if arr.shape[1] != len(names):
        raise InputError(path, f"{arr.shape[1]} channels but {len(names)} channel definitions")
    signal = arr.T.astype(np.float64) * np.asarray(scale)[:, None]
    return _Decoded(signal, float(item.SamplingFrequency), names, "dicom_ecg")


def _decode_numpy(path: Path, fs: float | None) -> _Decoded:
    """``.npy`` (12, N) or (N, 12) in mV; ``.npz`` the same under ``ecg``/``signal`` (or its only array),
    optionally with ``fs`` and ``leads`` arrays beside it."""
    names: list[str] | None = None
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = [k for k in ("ecg", "signal") if k in npz] or [k for k in npz if k not in ("fs", "leads")]
                if len(keys) != 1 and not {"ecg", "signal"} & set(keys):
                    raise InputError(path, f"npz holds arrays {list(npz)}: name the ECG 'ecg' or 'signal'")
                arr = np.asarray(npz[keys[0]])
                if fs is None and "fs" in npz:
                    fs = float(npz["fs"])
                if "leads" in npz:
                    names = [str(n) for n in npz["leads"]]
        else:
            arr = np.load(path, allow_pickle=False)
    except InputError:
        raise
    except Exception as err:  # numpy raises several types for corrupt files
        raise InputError(path, f"not a readable numpy file ({type(err).__name__})") from None
    if fs is None:
        raise InputError(path, "a .npy/.npz ECG carries no sampling rate: pass fs= (e.g. read_ecg(path, fs=500))")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(path, f"expected a numeric (12, N) or (N, 12) array, got {arr.dtype} {arr.shape}")
    n_leads = len(names) if names else len(LEADS)
    flags = ["units assumed mV (numpy array)"]
    if arr.shape[0] == n_leads and arr.shape[1] != n_leads:
        signal = arr
    elif arr.shape[1] == n_leads and arr.shape[0] != n_leads:
        signal = arr.T
        flags.append(f"transposed ({arr.shape[0]}, {n_leads}) → ({n_leads}, {arr.shape[0]})")
    else:
        raise InputError(path, f"array of shape {arr.shape}: expected ({n_leads}, N) or (N, {n_leads}) with N > {n_leads}")
    if names is None:
        names = list(LEADS)
        flags.append("lead order assumed canonical (I II III aVR aVL aVF V1–V6)")
    return _Decoded(signal.astype(np.float64), float(fs), names, "npy_ecg", flags)


def _stack_equal(rows: list[np.ndarray], names: list[str], path: Path) -> np.ndarray:
    lengths = {row.size for row in rows}
    if len(lengths) != 1:
        detail = ", ".join(f"{n}={r.size}" for n, r in zip(names, rows))
        raise InputError(path, f"leads have different lengths ({detail})")
    return np.stack(rows)
