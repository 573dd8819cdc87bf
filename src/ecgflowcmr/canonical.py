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

SPACING_MM: float = 1.8
"""In-plane pixel spacing (mm) of a canonical cine cropped at the default field of view (UK Biobank's
spacing; ``io.cmr.FOV_MM`` = ``SIZE`` × this)."""

TOKEN_STRIDE: int = 8
"""ECG samples per PA-MAE token (the paper's 8× temporal downsampling)."""
N_TOKENS: int = N_SAMPLES // TOKEN_STRIDE
"""Tokens of a canonical ECG (625)."""


def token_centre(k, stride: int = TOKEN_STRIDE):
    """Sample index of the centre of token ``k`` (int, float or array): ``stride·k + stride // 2``.

    Token k covers samples ``stride·k … stride·k + stride − 1``; its phase label is read at its centre.
    """
    return k * stride + stride // 2
