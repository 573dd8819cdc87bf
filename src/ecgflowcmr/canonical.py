"""The canonical forms every reader produces and every model consumes: shapes, rates, leads.

Canonical ECG: float32 (``len(LEADS)``, ``N_SAMPLES``) in mV at ``FS`` Hz, leads in ``LEADS`` order.
Canonical cine: float32 (``N_FRAMES``, ``SIZE``, ``SIZE``), frame 0 at the R-peak (end-diastole).
"""

from __future__ import annotations

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

FS: int = 500
"""Canonical sampling rate (Hz)."""

N_SAMPLES: int = 5000
"""Canonical length: 10 s at 500 Hz."""

N_FRAMES: int = 50
"""Cine frames over one R-R interval, from the R-peak."""

SIZE: int = 96
"""Cine rows and columns."""

