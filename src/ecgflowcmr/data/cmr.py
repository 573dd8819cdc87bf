"""Cine CMR: readers for every supported format → the canonical cine, writers, canonicalisation.

Canonical cine (DESIGN.md §2): float32 (50, 96, 96) in [-1, 1]; frame 0 at the R-peak (end-diastole).
Arrays are (T, H, W) with H the image rows (top to bottom) and W the columns (left to right). In NIfTI,
voxel (i, j, 0, t) holds frame t at row j, column i (``data[:, :, 0, t] = frames[t].T``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_FRAMES: int = 50
SIZE: int = 96


def write_nifti_cine(
    path: str | Path,
    frames: np.ndarray,
    spacing_mm: tuple[float, float] = (1.8, 1.8),
    frame_interval_s: float = 0.02,
    affine: np.ndarray | None = None,
    slice_thickness_mm: float = 8.0,
) -> None:
    """Write a cine (T, H, W) as NIfTI X×Y×1×T with spacing in mm and frame interval in s, units set.

    ``affine`` (4×4, RAS mm) defaults to a diagonal one from the spacing. The dtype of ``frames`` is kept
    (uint8/int16/float32).
    """
    import nibabel as nib

    frames = np.asarray(frames)
    data = np.ascontiguousarray(frames.transpose(2, 1, 0)[:, :, None, :])  # (W, H, 1, T) = X×Y×1×T
    if affine is None:
        affine = np.diag([spacing_mm[0], spacing_mm[1], slice_thickness_mm, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((spacing_mm[0], spacing_mm[1], slice_thickness_mm, frame_interval_s))
    nib.save(img, str(path))
