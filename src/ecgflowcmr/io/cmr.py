"""Cine CMR: readers for every supported format → the canonical cine, writers, canonicalisation.

Canonical cine (docs/architecture.md): float32 (50, 96, 96) in [-1, 1]; frame 0 at the R-peak (end-diastole).
Arrays are (T, H, W) with H the image rows (top to bottom) and W the columns (left to right). In NIfTI,
voxel (i, j, 0, t) holds frame t at row j, column i (``data[:, :, 0, t] = frames[t].T``).

Sources (docs/formats.md): NIfTI X×Y×1×T (or X×Y×T with time units set), a DICOM series folder,
the UK Biobank zip (field 20208, series ``CINE_segmented_LAX_4Ch``) and ``.npy``/``.npz`` (T×H×W).
Every source is taken to hold one R-R interval starting at the R-peak (ECG-triggered, end-diastole first).

Canonicalisation, in order (each step that changes something is recorded in ``CanonicalCine.flags``):

1. **Crop** a square in millimetres around the heart. Its centre is the bounding box centre of the mask
   (labels 1–5, union over frames) when one is given; else the fallback: the temporal standard deviation
   of each pixel (the beating heart moves most), smoothed, weighted by a broad centre prior, thresholded at
   0.2 × its maximum, the box around its main blobs; else (a static image) the image centre. The side is
   ``fov_mm`` (172.8 mm = 96 × 1.8 mm, the UK Biobank crop), so every canonical cine has the same
   spacing and heart size stays visible in the image; it grows (flagged) when the heart with a 10 mm
   margin does not fit. ``fov_mm=None`` crops tightly (box + margin, squared) instead. A source that is
   already 96×96 is not cropped.
2. **Resize** to 96×96: bilinear, with a Gaussian anti-aliasing blur when shrinking; outside the image
   is filled with the image minimum (background). Masks use nearest neighbour.
3. **Resample in time** to 50 frames: periodic linear interpolation over the cycle (frame T wraps to 0).
4. **Normalise** the intensity per cine: the 1st–99th percentile range → [-1, 1], clipped.

The format readers live in ``cmr_readers.py`` and the crop/resampling geometry in ``cmr_geometry.py``;
this module holds the public API, the dispatch by format and the canonicalisation steps.

A cine written by :func:`write_cine` (96×96, marked in the NIfTI ``descrip``) is read back exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.canonical import N_FRAMES, SIZE, SPACING_MM
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.cmr_geometry import HEART_MARGIN_MM as HEART_MARGIN_MM
from ecgflowcmr.io.cmr_geometry import (
    PERCENTILES,
    _crop_box,
    _resample_bilinear,
    _resample_nearest,
    _resample_time,
)
from ecgflowcmr.io.cmr_readers import (
    CANONICAL_DESCRIP,
    DEFAULT_SPACING_MM,
    MIN_FRAMES,
    _RawCine,
    _read_dicom_folder,
    _read_labels,
    _read_nifti,
    _read_npy,
    _read_ukb_zip,
)
from ecgflowcmr.io.cmr_readers import MAX_MISSING_FRAMES as MAX_MISSING_FRAMES
from ecgflowcmr.io.cmr_readers import PLAUSIBLE_CYCLE_S as PLAUSIBLE_CYCLE_S
from ecgflowcmr.io.cmr_readers import UKB_4CH_SERIES as UKB_4CH_SERIES
from ecgflowcmr.io.cmr_readers import UKB_MIXED_LAX_SERIES as UKB_MIXED_LAX_SERIES

# The canonical grid (N_FRAMES, SIZE) is defined in canonical.py, HEART_MARGIN_MM and PERCENTILES in cmr_geometry.py; the
# source-file constants (MIN_FRAMES, MAX_MISSING_FRAMES, DEFAULT_SPACING_MM, PLAUSIBLE_CYCLE_S, UKB_*_SERIES,
# CANONICAL_DESCRIP) in cmr_readers.py. All stay importable from here.

FOV_MM: float = 172.8
"""Side of the square crop around the heart (96 px × 1.8 mm, UK Biobank's in-plane spacing)."""
DEFAULT_CYCLE_S: float = 1.0
"""Assumed cycle duration when the file has no frame interval; flagged."""


@dataclass
class CanonicalCine:
    """A cine in canonical form plus where it came from and what was done to it.

    ``frames``: float32 (50, 96, 96) in [-1, 1], frame 0 = R-peak (end-diastole).
    ``spacing_mm``: (row, col) pixel spacing of the canonical grid. ``frame_interval_s``: time between
    canonical frames (cycle duration / 50). ``affine``: 4×4, canonical voxel (col, row, 0) → the source's
    world space (RAS mm), so a generated cine can be written back in the input's space (:func:`write_cine`).
    ``crop_box``: (row0, col0, row1, col1) in source pixel units (edges; may extend past the image).
    """

    frames: np.ndarray
    spacing_mm: tuple[float, float]
    frame_interval_s: float
    affine: np.ndarray
    path: str = ""
    format: str = ""
    source_shape: tuple[int, int, int] = (0, 0, 0)
    """(T, H, W) as read."""
    source_spacing_mm: tuple[float, float] | None = None
    """(row, col) in the file; None when the file has none (``.npy``)."""
    source_frame_interval_s: float | None = None
    """Between source frames; None when the file has none."""
    source_affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    crop_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    flags: list[str] = field(default_factory=list)
    """What was done (``resampled 30→50 frames``, ``filled missing frame 17 with frame 16``, ``crop: …``)."""
    written01: np.ndarray | None = None
    """For a file :func:`write_cine` wrote (float32, 50 × 96 × 96): its values exactly as stored, in [0, 1].
    ``frames`` = 2·x − 1 cannot hold them exactly (float32 loses the low bits of x < 0.25 there)."""

    @property
    def frames01(self) -> np.ndarray:
        """The frames for display or writing: float32 (50, 96, 96) in [0, 1]; for a cine ``write_cine``
        wrote, the written array itself (bit for bit), so writing and reading back round-trips exactly."""
        if self.written01 is not None:
            return self.written01
        return (self.frames + 1.0) * 0.5


# --------------------------------------------------------------------------- public API


def read_cine(
    path: str | Path,
    *,
    mask: str | Path | None = None,
    format: str | None = None,
    fov_mm: float | None = FOV_MM,
) -> CanonicalCine:
    """Read a cine in any supported format and canonicalise it (module docstring: the steps).

    ``mask``: label mask on the same grid as the cine (NIfTI or ``.npy``; labels 1–5 are the heart);
    it places the crop. ``format``: one of ``formats.CINE_FORMATS`` to skip sniffing. ``fov_mm``: crop
    side in mm, or None for a tight crop around the heart. Raises InputError for an unusable file.
    """
    path = Path(path)
    if fov_mm is not None and not 0 < fov_mm < float("inf"):
        raise InputError("fov_mm", f"must be a positive number or None, got {fov_mm}")
    fmt = _cine_format(path, format)
    raw = _READERS[fmt](path)
    _check_frames(path, raw.frames)
    labels = None
    if mask is not None:
        labels = _read_labels(Path(mask))
        if labels.shape[1:] != raw.frames.shape[1:]:
            raise InputError(mask, f"mask is {labels.shape[1]}×{labels.shape[2]} pixels but the cine "
                             f"is {raw.frames.shape[1]}×{raw.frames.shape[2]}")
        if labels.shape[0] not in (1, raw.frames.shape[0]):
            raise InputError(mask, f"mask has {labels.shape[0]} frames but the cine has {raw.frames.shape[0]} "
                             "(expected 1 or the same number)")
    return _canonicalize(raw, path, fmt, labels, fov_mm)


def read_mask(path: str | Path, like: CanonicalCine | None = None) -> np.ndarray:
    """Label mask (0 background, 1 LV, 2 LV myocardium, 3 RV, 4 LA, 5 RA) as uint8.

    Without ``like``: (T_m, H, W) on the source grid (T_m = 1 for a single-frame mask). With ``like``
    (the cine read from the same grid): mapped like the cine, nearest neighbour in space and time, giving
    (50, 96, 96), or (1, 96, 96) for a single-frame mask.
    """
    labels = _read_labels(Path(path))
    if like is None:
        return labels
    t_src, h, w = like.source_shape
    if labels.shape[1:] != (h, w):
        raise InputError(path, f"mask is {labels.shape[1]}×{labels.shape[2]} pixels but the cine is {h}×{w}")
    out = _resample_nearest(labels, like.crop_box)
    if out.shape[0] > 1:
        if out.shape[0] != t_src:
            raise InputError(path, f"mask has {out.shape[0]} frames but the cine has {t_src}")
        out = out[np.round(np.arange(N_FRAMES) * t_src / N_FRAMES).astype(int) % t_src]
    return out


def write_cine(
    path: str | Path,
    frames01: np.ndarray,
    like: CanonicalCine | None = None,
    spacing_mm: tuple[float, float] | None = None,
    frame_interval_s: float | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a cine (T, H, W) with values in [0, 1] as NIfTI X×Y×1×T (``.nii`` or ``.nii.gz``), atomically.

    Geometry from ``like`` (the canonical cine of the input, so the output lies in the input's world
    space), else from ``spacing_mm`` (row, col; default 1.8 mm) and ``frame_interval_s`` (default a 1 s
    cycle) with a diagonal affine; explicit arguments win over ``like``. ``dtype``: ``"float32"``
    (lossless, marked so that :func:`read_cine` reads it back unchanged: ``frames01`` is the written
    array bit for bit, ``frames`` = 2·x − 1) or ``"uint8"`` (round(255·x)). Values are clipped to [0, 1];
    NaN raises ValueError. The canonical cine writer (``generate`` writes through it); :func:`write_nifti_cine`
    is the NIfTI encoding beneath it, which the phantom also uses to write scanner-like sources.
    """
    from ecgflowcmr.atomic import atomic_file

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: write_cine writes NIfTI (.nii or .nii.gz)")
    frames01 = np.asarray(frames01, dtype=np.float32)
    if frames01.ndim != 3:
        raise ValueError(f"frames01 must be (T, H, W), got shape {frames01.shape}")
    if not np.isfinite(frames01).all():
        raise ValueError(f"{path}: frames contain NaN or infinity")
    frames01 = np.clip(frames01, 0.0, 1.0)
    if dtype == "uint8":
        data = np.round(frames01 * 255.0).astype(np.uint8)
    elif dtype == "float32":
        data = frames01
    else:
        raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
    if spacing_mm is None:
        spacing_mm = like.spacing_mm if like is not None else (SPACING_MM, SPACING_MM)
    if frame_interval_s is None:
        frame_interval_s = like.frame_interval_s if like is not None else DEFAULT_CYCLE_S / frames01.shape[0]
    affine = None
    if like is not None and like.frames.shape[1:] == frames01.shape[1:]:
        affine = like.affine
    if affine is None:
        affine = np.diag([spacing_mm[1], spacing_mm[0], 8.0, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        write_nifti_cine(tmp, data, spacing_mm=(spacing_mm[1], spacing_mm[0]),
                         frame_interval_s=float(frame_interval_s), affine=affine,
                         description=CANONICAL_DESCRIP if dtype == "float32" else "")
    return path


def inspect_cine(path: str | Path) -> dict[str, Any]:
    """Describe a cine for ``ecgflowcmr inspect`` (JSON-serialisable).

    Keys: ``path``; ``format`` (nifti, dicom_series, ukb_zip, npy_cine); ``frames`` (source frame count);
    ``size`` ([rows, cols] of the source); ``spacing_mm`` ([row, col] of the source, null if unknown);
    ``frame_interval_s`` (between source frames, null if unknown); ``cycle_s`` (frames × interval, the R-R
    interval of the acquisition; null if unknown); ``heart_rate_bpm`` (60 / cycle_s); ``orientation``
    (nibabel axis codes of the source's columns, rows, slice normal, e.g. ["L", "P", "S"]);
    ``canonical`` ({frames, size, spacing_mm, frame_interval_s} after canonicalisation); ``crop_box``
    ([row0, col0, row1, col1] in source pixels); ``flags`` (what reading and canonicalisation did).
    """
    from nibabel.orientations import aff2axcodes

    cine = read_cine(path)
    t = cine.source_shape[0]
    interval = cine.source_frame_interval_s
    cycle = interval * t if interval is not None else None
    return {
        "path": cine.path,
        "format": cine.format,
        "frames": t,
        "size": list(cine.source_shape[1:]),
        "spacing_mm": [round(float(s), 4) for s in cine.source_spacing_mm] if cine.source_spacing_mm else None,
        "frame_interval_s": round(float(interval), 6) if interval is not None else None,
        "cycle_s": round(float(cycle), 4) if cycle is not None else None,
        "heart_rate_bpm": round(60.0 / cycle, 1) if cycle else None,
        "orientation": [str(c) for c in aff2axcodes(cine.source_affine)],
        "canonical": {
            "frames": int(cine.frames.shape[0]),
            "size": list(cine.frames.shape[1:]),
            "spacing_mm": [round(float(s), 4) for s in cine.spacing_mm],
            "frame_interval_s": round(float(cine.frame_interval_s), 6),
        },
        "crop_box": [round(float(v), 2) for v in cine.crop_box],
        "flags": list(cine.flags),
    }


def write_nifti_cine(
    path: str | Path,
    frames: np.ndarray,
    spacing_mm: tuple[float, float] = (SPACING_MM, SPACING_MM),
    frame_interval_s: float = 0.02,
    affine: np.ndarray | None = None,
    slice_thickness_mm: float = 8.0,
    description: str = "",
) -> None:
    """Write a cine (T, H, W) as NIfTI X×Y×1×T with spacing in mm and frame interval in s, units set.

    ``spacing_mm`` is (x, y) = (column, row) spacing, NIfTI's axis order. ``affine`` (4×4, RAS mm)
    defaults to a diagonal one from the spacing. The dtype of ``frames`` is kept (uint8/int16/float32).
    ``description`` goes into the header's ``descrip`` (≤ 80 bytes).
    """
    import nibabel as nib

    frames = np.ascontiguousarray(frames)
    data = frames.transpose(2, 1, 0)[:, :, None, :]  # (W, H, 1, T) = X×Y×1×T; Fortran order = frames' bytes
    if affine is None:
        affine = np.diag([spacing_mm[0], spacing_mm[1], slice_thickness_mm, 1.0])
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_xyzt_units("mm", "sec")
    header.set_zooms((spacing_mm[0], spacing_mm[1], slice_thickness_mm, frame_interval_s))
    if description:
        header["descrip"] = description.encode()[:80]
    if not str(path).endswith(".gz"):
        nib.save(img, str(path))
        return
    # .nii.gz written directly: the same NIfTI bytes nibabel writes, deflated with run-length matching
    # (as small as level 1 on images, at half the time), a gzip header with no name and no time
    # (deterministic bytes).
    header.set_data_dtype(frames.dtype)
    header.set_data_offset(352)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0  # what nibabel writes for unscaled data
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31, 9, zlib.Z_RLE)  # wbits 31: gzip wrapper, mtime 0
    body = deflate.compress(header.binaryblock + b"\0\0\0\0")
    body += deflate.compress(memoryview(frames).cast("B")) + deflate.flush()
    Path(path).write_bytes(body)


# --------------------------------------------------------------------------- format dispatch


def _cine_format(path: Path, format: str | None) -> str:
    from ecgflowcmr.io.formats import CINE_FORMATS, is_ecg, sniff

    if format is not None:
        if format not in CINE_FORMATS:
            raise InputError(path, f"unknown cine format {format!r} (one of {', '.join(CINE_FORMATS)})")
        if not path.exists():
            raise InputError(path, "file not found")
        if path.is_file() and path.stat().st_size == 0:
            raise InputError(path, "file is empty")
        return format
    fmt = sniff(path)
    if fmt == "dicom_ecg":
        raise InputError(path, "a single DICOM file; give the folder that holds the cine series")
    if is_ecg(fmt):
        raise InputError(path, f"this is an ECG ({fmt}), not a cine")
    return fmt


_READERS = {"nifti": _read_nifti, "npy_cine": _read_npy, "dicom_series": _read_dicom_folder,
            "ukb_zip": _read_ukb_zip}


# --------------------------------------------------------------------------- canonicalisation


def _check_frames(path: Path, frames: np.ndarray) -> None:
    t = frames.shape[0]
    if t < MIN_FRAMES:
        raise InputError(path, f"only {t} frame(s); at least {MIN_FRAMES} are needed for one cardiac cycle")
    if min(frames.shape[1:]) < 8:
        raise InputError(path, f"frames of {frames.shape[1]}×{frames.shape[2]} pixels are too small")
    bad = int((~np.isfinite(frames)).sum())
    if bad:
        raise InputError(path, f"{bad} non-finite pixel values (NaN or infinity)")


def _canonicalize(raw: _RawCine, path: Path, fmt: str, labels: np.ndarray | None,
                  fov_mm: float | None) -> CanonicalCine:
    flags = list(raw.flags)
    t, h, w = raw.frames.shape
    spacing = raw.spacing_mm or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    if (h, w) == (SIZE, SIZE):
        box = (0.0, 0.0, float(SIZE), float(SIZE))
        frames = raw.frames
        if labels is not None:
            flags.append("crop: none (source already 96×96; mask unused)")
    else:
        box, note = _crop_box(raw.frames, spacing, labels, fov_mm)
        flags.append(note)
        frames = _resample_bilinear(raw.frames, box, cval=float(raw.frames.min()))
    if t != N_FRAMES:
        frames = _resample_time(frames)
        flags.append(f"resampled {t}→{N_FRAMES} frames")
    written01 = None
    if raw.canonical:
        frames = np.clip(frames * 2.0 - 1.0, -1.0, 1.0)
        flags.append("ecgflowcmr cine: values read as written")
        if t == N_FRAMES:
            written01 = np.clip(raw.frames, 0.0, 1.0)
    else:
        frames = _normalize(frames, path)
    interval = raw.frame_interval_s
    if interval is None:
        flags.append(f"frame interval unknown: assumed a {DEFAULT_CYCLE_S:g} s cycle")
        cycle = DEFAULT_CYCLE_S
    else:
        cycle = interval * t
    r0, c0, r1, c1 = box
    sr, sc = (r1 - r0) / SIZE, (c1 - c0) / SIZE
    to_source = np.array([[sc, 0, 0, c0 + 0.5 * sc - 0.5], [0, sr, 0, r0 + 0.5 * sr - 0.5],
                          [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    return CanonicalCine(
        frames=np.ascontiguousarray(frames, dtype=np.float32),
        spacing_mm=(float(spacing[0] * sr), float(spacing[1] * sc)),
        frame_interval_s=float(cycle / N_FRAMES),
        affine=raw.affine @ to_source,
        path=str(path),
        format=fmt,
        source_shape=(t, h, w),
        source_spacing_mm=raw.spacing_mm,
        source_frame_interval_s=interval,
        source_affine=raw.affine,
        crop_box=box,
        flags=flags,
        written01=written01,
    )


def _normalize(frames: np.ndarray, path: Path) -> np.ndarray:
    """Per-cine percentile range → [-1, 1], clipped."""
    lo, hi = (float(v) for v in np.percentile(frames, PERCENTILES))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        raise InputError(path, "cine has constant intensity around the heart: nothing to show")
    return np.clip((frames - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)
