"""12-lead ECG: readers for every supported format → the canonical ECG, writers, quality flags.

Canonical ECG (DESIGN.md §2): float32 (12, 5000) in mV at 500 Hz (10 s), leads in ``LEADS`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS: int = 500
"""Canonical sampling rate (Hz)."""
N_SAMPLES: int = 5000
"""Canonical length: 10 s at 500 Hz."""


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


def write_wfdb(record: str | Path, signal_mv: np.ndarray, fs: float = FS, leads: tuple[str, ...] = LEADS) -> None:
    """Write a WFDB record (``record.hea`` + ``record.dat``, format 16, 1 µV per LSB).

    ``signal_mv``: (n_leads, n_samples) in mV. Deterministic bytes for identical input.
    """
    import wfdb

    record = Path(record)
    signal_mv = np.asarray(signal_mv, dtype=np.float64)
    digital = np.round(signal_mv.T * 1000.0)
    if np.abs(digital).max(initial=0) >= 32767:
        raise ValueError(f"{record}: signal exceeds ±32.7 mV, cannot be stored at 1 µV/LSB in format 16")
    n_leads = signal_mv.shape[0]
    wfdb.wrsamp(
        record.name,
        fs=fs,
        units=["mV"] * n_leads,
        sig_name=list(leads),
        d_signal=digital.astype(np.int16).astype(np.int64),
        fmt=["16"] * n_leads,
        adc_gain=[1000.0] * n_leads,
        baseline=[0] * n_leads,
        write_dir=str(record.parent),
    )
