"""Cine format readers: each supported source (NIfTI, ``.npy``/``.npz``, DICOM series folder, UK Biobank
zip) → ``_RawCine``, the frames (T, H, W) float32 as the file holds them with their spacing, frame interval
and affine; plus label masks (``_read_labels``).

The readers only decode and check the file; cropping, resampling and normalising are ``cmr.py``'s
canonicalisation, which picks the reader by format (``cmr._READERS``). Split from ``cmr.py`` so that each
module reads in one sitting; imports nothing from it (no cycle) and ``cmr.py`` re-exports the constants.
"""

from __future__ import annotations

import csv
import io
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.canonical import SIZE
from ecgflowcmr.errors import InputError
from ecgflowcmr.limits import (
    CINE_MAX_ARCHIVE_BYTES,
    CINE_MAX_FILES,
    CINE_MAX_FRAMES,
    CINE_MAX_SIDE,
    CINE_MAX_VOXELS,
    check_count,
    check_regular_file,
)

MIN_FRAMES: int = 10
"""Fewer source frames than this cannot describe a cardiac cycle: refused."""
MAX_MISSING_FRAMES: int = 2
"""A DICOM series may miss up to this many frames (each filled with its previous neighbour, flagged)."""
DEFAULT_SPACING_MM: float = 1.8
"""Assumed in-plane spacing when the file has none (``.npy``); flagged."""
PLAUSIBLE_CYCLE_S: tuple[float, float] = (0.25, 3.0)
"""A frame interval × T outside this range is not a heart cycle (used to tell ms from s)."""
UKB_4CH_SERIES: str = "CINE_segmented_LAX_4Ch"
UKB_MIXED_LAX_SERIES: str = "CINE_segmented_LAX"
"""A mixed long-axis series: 3×T images in the order 3Ch, 4Ch, 2Ch (docs/formats.md)."""
CANONICAL_DESCRIP: str = "ecgflowcmr cine [0,1]"
"""NIfTI ``descrip`` of a cine written by :func:`write_cine`: values in [0, 1], read back as written."""
SPACING_RANGE_MM: tuple[float, float] = (0.1, 10.0)
"""Accepted in-plane pixel spacing: clinical cines use 0.6–3 mm; outside this the header is wrong (or in
metres or microns)."""
MASK_LABELS: int = 5
"""Mask labels are 0 (background) to 5 (RA); anything else is another labelling scheme: refused."""
NIFTI_ERRORS = (OSError, EOFError, ValueError, TypeError, IndexError, struct.error, zlib.error)
"""What nibabel raises for corrupt or truncated files (its ImageFileError is added where it is imported)."""
DICOM_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OSError, EOFError,
                ZeroDivisionError, OverflowError, NotImplementedError, RuntimeError)
"""What pydicom raises for malformed elements or pixel data it cannot decode (RuntimeError: no handler)."""
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error)


@dataclass
class _RawCine:
    """A source cine before canonicalisation: frames (T, H, W) float32, affine for voxel (col, row, 0)."""

    frames: np.ndarray
    spacing_mm: tuple[float, float] | None
    frame_interval_s: float | None
    affine: np.ndarray
    flags: list[str] = field(default_factory=list)
    canonical: bool = False


# --------------------------------------------------------------------------- format readers


def _load_nifti(path: Path, what: str = "cine") -> Any:
    """nibabel's image with its header checked: voxel count, voxel type and affine, before any data is read."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.header.get_data_shape())
        dtype = img.header.get_data_dtype()
        affine = np.asarray(img.affine, dtype=np.float64)
    except (nib.filebasedimages.ImageFileError, *NIFTI_ERRORS) as err:
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = "RGB" if dtype.fields is not None else ("complex" if dtype.kind == "c" else str(dtype))
        raise InputError(path, f"{kind} voxels ({dtype}); a {what} holds one real value per voxel")
    check_count(path, "voxels", float(np.prod(shape, dtype=np.float64)), CINE_MAX_VOXELS)
    if not np.isfinite(affine).all():
        raise InputError(path, "the header's affine holds NaN or infinity")
    return img


def _nifti_data(img: Any, path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, *NIFTI_ERRORS) as err:
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None


def _check_spacing(path: Path | str, spacing: tuple[float, float]) -> None:
    lo, hi = SPACING_RANGE_MM
    if not all(lo <= s <= hi for s in spacing):
        raise InputError(path, f"pixel spacing {spacing[0]:g} × {spacing[1]:g} mm outside {lo:g}–{hi:g} mm")


def _check_cine_shape(path: Path | str, t: int, h: int, w: int) -> None:
    check_count(path, "frames", t, CINE_MAX_FRAMES)
    check_count(path, "rows", h, CINE_MAX_SIDE)
    check_count(path, "columns", w, CINE_MAX_SIDE)
    check_count(path, "voxels (frames × rows × columns)", float(t) * h * w, CINE_MAX_VOXELS)


def _read_nifti(path: Path) -> _RawCine:
    img = _load_nifti(path)
    header = img.header
    zooms = [float(z) for z in header.get_zooms()]
    _, time_unit = header.get_xyzt_units()
    shape = tuple(int(n) for n in header.get_data_shape())
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    dims = "×".join(str(s) for s in shape)
    if len(shape) < 3:
        raise InputError(path, f"a single 2-D image ({dims}), not a cine (expected X×Y×1×T)")
    if len(shape) == 3:
        if time_unit == "unknown":
            raise InputError(path, f"3-D volume {dims} with no time axis (third axis spacing "
                             f"{zooms[2]:g} mm), not a cine; expected X×Y×1×T (or X×Y×T with time units set)")
        interval_raw = zooms[2]
    elif len(shape) == 4:
        if shape[2] > 1 and shape[3] == 1:
            raise InputError(path, f"3-D volume {dims} ({shape[2]} slices, one time point), not a cine; "
                             f"expected X×Y×1×T")
        if shape[2] > 1:
            raise InputError(path, f"a stack of {shape[2]} slices × {shape[3]} frames; a four-chamber cine "
                             f"is one slice (X×Y×1×T)")
        interval_raw = zooms[3]
    else:
        raise InputError(path, f"{len(shape)}-D array {dims}, not a cine (expected X×Y×1×T)")
    _check_cine_shape(path, shape[-1], shape[1], shape[0])
    _check_spacing(path, (zooms[1], zooms[0]))
    data = _nifti_data(img, path).reshape(shape)
    if len(shape) == 3:
        data = data[:, :, None, :]
    frames = np.ascontiguousarray(data[:, :, 0, :].transpose(2, 1, 0)).astype(np.float32)  # (T, H, W)
    flags: list[str] = []
    interval = _frame_interval_s(interval_raw, time_unit, frames.shape[0], flags)
    descrip = header["descrip"].tobytes().split(b"\0")[0].decode("latin-1").strip()
    canonical = descrip == CANONICAL_DESCRIP and frames.shape[1:] == (SIZE, SIZE)
    return _RawCine(frames, (zooms[1], zooms[0]), interval, np.asarray(img.affine, dtype=np.float64), flags,
                    canonical)


def _frame_interval_s(value: float, unit: str, n_frames: int, flags: list[str]) -> float | None:
    """Frame interval in seconds from NIfTI's time pixdim and unit; an unset unit is judged by plausibility."""
    lo, hi = PLAUSIBLE_CYCLE_S
    if not np.isfinite(value) or value <= 0:
        flags.append("frame interval missing in the header")
        return None
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)
    if scale is not None:
        seconds = value * scale
        if not lo <= seconds * n_frames <= hi:
            flags.append(f"frame interval {seconds:g} s gives an implausible cycle of {seconds * n_frames:g} s")
        return seconds
    if lo <= value * n_frames <= hi:
        flags.append(f"time units unset: frame interval {value:g} read as seconds")
        return value
    if lo <= value * n_frames / 1000.0 <= hi:
        flags.append(f"time units unset: frame interval {value:g} read as milliseconds")
        return value / 1000.0
    flags.append(f"time units unset and frame interval {value:g} is neither plausible in s nor in ms")
    return None


def _read_npy(path: Path) -> _RawCine:
    from ecgflowcmr.io.formats import NUMPY_ERRORS, numpy_arrays

    name, (shape, _) = next(iter(numpy_arrays(path, max_bytes=8 * CINE_MAX_VOXELS).items()))
    if len(shape) in (3, 4):
        _check_cine_shape(path, int(np.prod(shape[:-2])), shape[-2], shape[-1])
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                data = npz[name]
        else:
            data = np.load(path, allow_pickle=False)
    except NUMPY_ERRORS as err:
        raise InputError(path, f"not a readable numpy file ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and 1 in data.shape[:2]:
        data = data.reshape(-1, *data.shape[2:])  # (1, T, H, W) or (T, 1, H, W)
    if data.ndim != 3:
        raise InputError(path, f"array of shape {data.shape} is not a cine (expected T×H×W)")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InputError(path, f"array of dtype {data.dtype} is not an image")
    flags = [f"pixel spacing unknown: assumed {DEFAULT_SPACING_MM} mm"]
    affine = np.diag([DEFAULT_SPACING_MM, DEFAULT_SPACING_MM, 8.0, 1.0])
    return _RawCine(data.astype(np.float32), None, None, affine, flags)


def _read_dicom_folder(path: Path) -> _RawCine:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = []
    for root, _, names in os.walk(path, onerror=lambda err: _raise_walk(path, err)):  # never follows links
        files += [Path(root) / name for name in names]
        check_count(path, "files in the series folder", len(files), CINE_MAX_FILES)
    total, regular = 0, []
    for file in sorted(files):
        try:
            st = check_regular_file(file)
        except InputError:
            continue  # a FIFO, a dangling or looping link: not part of the series (and never opened)
        total += st.st_size
        check_count(path, "bytes in the series folder", total, CINE_MAX_ARCHIVE_BYTES)
        if st.st_size:
            regular.append(file)
    items = []
    for file in regular:
        try:
            items.append((file.name, pydicom.dcmread(file)))
        except InvalidDicomError:
            continue  # a manifest, a README, a thumbnail: not part of the series
        except DICOM_ERRORS as err:
            raise InputError(file, f"unreadable DICOM file ({type(err).__name__}: {err})") from None
    return _series_to_raw(path, items, {}, require_4ch=False)


def _raise_walk(path: Path, err: OSError) -> None:
    raise InputError(path, f"cannot list the series folder ({err.strerror or err})")


def _read_ukb_zip(path: Path) -> _RawCine:
    """UK Biobank field 20208 zip: DICOMs + manifest.csv (or .cvs), read in memory, nothing extracted."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ecgflowcmr.io.formats import check_zip_member

    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as err:
        raise InputError(path, f"not a readable zip archive ({err})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        check_count(path, "zip entries", len(members), CINE_MAX_FILES)
        check_count(path, "uncompressed bytes", sum(m.file_size for m in members), CINE_MAX_ARCHIVE_BYTES)
        for member in members:
            check_zip_member(path, member)
        descriptions: dict[str, str] = {}
        items = []
        for member in members:
            base = member.filename.rsplit("/", 1)[-1]
            try:
                blob = zf.read(member)
            except ZIP_ERRORS as err:
                raise InputError(f"{path}:{member.filename}", f"unreadable zip member ({err})") from None
            if base.lower() in ("manifest.csv", "manifest.cvs"):
                descriptions = _parse_ukb_manifest(blob.decode("latin-1"))
                continue
            try:
                items.append((base, pydicom.dcmread(io.BytesIO(blob))))
            except InvalidDicomError:
                continue
            except DICOM_ERRORS as err:
                raise InputError(f"{path}:{member.filename}", f"unreadable DICOM ({type(err).__name__})") from None
    return _series_to_raw(path, items, descriptions, require_4ch=True)


def _parse_ukb_manifest(text: str) -> dict[str, str]:
    """filename → series description from a UKB manifest.

    Its dates hold commas ("Mar 3, 2015") and its series column is spelt ``series discription``: the date
    commas are removed first, and any field still in excess is assumed to sit in the date column, so
    columns left of it are indexed from the start and columns right of it from the end.
    """
    text = re.sub(r"([A-Za-z]{3}) (\d{1,2}), (\d{4})", r"\1 \2 \3", text)
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    names = ("series discription", "series description", "seriesdescription")
    if "filename" not in header or not any(n in header for n in names):
        return {}
    file_col = header.index("filename")
    series_col = next(header.index(n) for n in names if n in header)
    date_col = next((i for i, h in enumerate(header) if "date" in h), len(header))
    out = {}
    for row in rows[1:]:
        extra = max(0, len(row) - len(header))

        def cell(col: int, row: list[str] = row, extra: int = extra) -> str:
            return row[col if col <= date_col else col + extra].strip()

        try:
            out[cell(file_col).rsplit("/", 1)[-1]] = cell(series_col)
        except IndexError:
            continue
    return out


# --------------------------------------------------------------------------- DICOM series


def _description(name: str, ds: Any, manifest: dict[str, str]) -> str:
    return str(getattr(ds, "SeriesDescription", "") or manifest.get(name, "")).strip()


def _series_to_raw(where: Path, items: list, manifest: dict[str, str], require_4ch: bool) -> _RawCine:
    """Choose the four-chamber series among DICOM datasets, order its frames, fill small gaps."""
    try:
        return _choose_series(where, items, manifest, require_4ch)
    except InputError:  # a ValueError too: pass it through unwrapped
        raise
    except DICOM_ERRORS as err:  # a malformed element (e.g. TriggerTime "abc") read as a number
        raise InputError(where, f"malformed DICOM series ({type(err).__name__}: {err})") from None


def _choose_series(where: Path, items: list, manifest: dict[str, str], require_4ch: bool) -> _RawCine:
    items = [(n, ds) for n, ds in items if "PixelData" in ds and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1]
    if not items:
        raise InputError(where, "no DICOM images found")
    groups: dict[str, list] = {}
    for name, ds in items:
        key = str(getattr(ds, "SeriesInstanceUID", "") or _description(name, ds, manifest))
        groups.setdefault(key, []).append((name, ds))
    described = {k: _description(*g[0], manifest) for k, g in groups.items()}
    flags: list[str] = []

    def last(keys: list[str]) -> str:  # "the last SeriesInstanceUID": highest SeriesNumber, then UID order
        return max(keys, key=lambda k: (int(getattr(groups[k][0][1], "SeriesNumber", 0) or 0), k))

    four_ch = [k for k, d in described.items() if d.lower() == UKB_4CH_SERIES.lower()]
    mixed = [k for k, d in described.items() if d.lower() == UKB_MIXED_LAX_SERIES.lower()]
    if four_ch:
        key = last(four_ch)
        if len(four_ch) > 1:
            flags.append(f"{len(four_ch)} {UKB_4CH_SERIES} series: took the last ({key})")
        chosen = groups[key]
    elif mixed:
        key = last(mixed)
        chosen = sorted(groups[key], key=lambda it: int(getattr(it[1], "InstanceNumber", 0) or 0))
        t = int(getattr(chosen[0][1], "CardiacNumberOfImages", 0) or 0)
        check_count(where, "CardiacNumberOfImages", t, CINE_MAX_FRAMES)
        if t <= 0 or len(chosen) != 3 * t:
            raise InputError(where, f"mixed {UKB_MIXED_LAX_SERIES} series holds {len(chosen)} images, "
                             f"not 3 × CardiacNumberOfImages ({t}); cannot find the four-chamber view")
        chosen = chosen[t:2 * t]
        flags.append(f"mixed {UKB_MIXED_LAX_SERIES} series: took the 2nd of 3 views (3Ch, 4Ch, 2Ch)")
    elif len(groups) == 1 and not require_4ch:
        chosen = next(iter(groups.values()))
    else:
        found = ", ".join(sorted({d or "(no description)" for d in described.values()}))
        raise InputError(where, f"no {UKB_4CH_SERIES} series (found: {found})")
    raw = _assemble_series(where, chosen)
    raw.flags[:0] = flags
    return raw


def _assemble_series(where: Path, items: list) -> _RawCine:
    """Frames ordered by TriggerTime; T from CardiacNumberOfImages; ≤ MAX_MISSING_FRAMES gaps filled."""
    flags: list[str] = []
    if any(getattr(ds, "TriggerTime", None) in (None, "") for _, ds in items):
        raise InputError(where, "DICOM images without TriggerTime: cannot order the frames")
    items = sorted(items, key=lambda it: (float(it[1].TriggerTime), int(getattr(it[1], "InstanceNumber", 0) or 0)))
    unique: dict[float, tuple] = {}
    for name, ds in items:
        unique[round(float(ds.TriggerTime), 3)] = (name, ds)  # duplicates: the later instance wins
    if len(unique) < len(items):
        flags.append(f"dropped {len(items) - len(unique)} images with a repeated TriggerTime")
    items = list(unique.values())
    times = np.array(list(unique.keys()), dtype=np.float64)
    n = len(items)
    t_declared = int(getattr(items[0][1], "CardiacNumberOfImages", 0) or 0)
    t = t_declared if t_declared > 0 else n
    first = items[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    _check_cine_shape(f"{where} (CardiacNumberOfImages, Rows, Columns)", t, rows, cols)
    if int(getattr(first, "SamplesPerPixel", 1) or 1) != 1:
        raise InputError(where, f"{first.SamplesPerPixel} samples per pixel (colour); a cine is grey-level")
    if n > t:
        raise InputError(where, f"series holds {n} frames but CardiacNumberOfImages is {t}")
    if t < MIN_FRAMES:
        raise InputError(where, f"only {t} frames; at least {MIN_FRAMES} are needed for one cardiac cycle")
    dt_ms = float(np.median(np.diff(times))) if n > 1 else 0.0
    if dt_ms <= 0:
        raise InputError(where, "cannot derive the frame interval from TriggerTime")
    slots = np.round((times - times[0]) / dt_ms).astype(int)
    offset = round(float(times[0]) / dt_ms)
    if slots[-1] + offset < t:
        slots = slots + offset
    if slots[-1] >= t or len(set(slots.tolist())) < n:
        raise InputError(where, "TriggerTime values are irregular: cannot place the frames in the cycle")
    missing = sorted(set(range(t)) - set(slots.tolist()))
    if len(missing) > MAX_MISSING_FRAMES:
        shown = ", ".join(str(m) for m in missing[:8]) + (" …" if len(missing) > 8 else "")
        raise InputError(where, f"series has {n} of {t} frames ({len(missing)} missing: {shown}); "
                         f"at most {MAX_MISSING_FRAMES} can be filled")
    images: list[np.ndarray | None] = [None] * t
    for slot, (name, ds) in zip(slots, items):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(where, f"{name} is {ds.Rows}×{ds.Columns} but the series is {rows}×{cols}")
        if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
            raise InputError(where, f"{name}: {ds.SamplesPerPixel} samples per pixel (colour); a cine is grey-level")
        try:
            pixels = ds.pixel_array.astype(np.float32)
            if pixels.shape != (rows, cols):
                raise ValueError(f"decoded pixels are {pixels.shape}, the header says {rows}×{cols}")
        except DICOM_ERRORS as err:  # no decoder for the transfer syntax, or corrupt pixel data
            raise InputError(where, f"{name}: cannot decode pixel data ({type(err).__name__}: {err}); "
                             "compressed DICOM needs pylibjpeg or gdcm") from None
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        images[slot] = pixels * slope + float(getattr(ds, "RescaleIntercept", 0) or 0)
    for m in missing:  # previous neighbour (the reference pipeline's choice); frame 0 takes the next one
        source = m - 1 if m > 0 else next(i for i in range(t) if images[i] is not None)
        while images[source] is None:
            source -= 1
        images[m] = images[source]
        flags.append(f"filled missing frame {m} with frame {source}")
    frames = np.stack(images)  # type: ignore[arg-type]
    spacing = tuple(float(v) for v in getattr(first, "PixelSpacing", None) or [])
    if len(spacing) != 2:
        flags.append(f"PixelSpacing missing: assumed {DEFAULT_SPACING_MM} mm")
        spacing = (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
    _check_spacing(where, (spacing[0], spacing[1]))
    return _RawCine(frames, (spacing[0], spacing[1]), dt_ms / 1000.0, _dicom_affine(first, spacing), flags)


def _dicom_affine(ds: Any, spacing: tuple[float, float]) -> np.ndarray:
    """Voxel (col, row, 0) → RAS mm from ImagePositionPatient/ImageOrientationPatient (LPS → RAS)."""
    iop = [float(v) for v in getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    ipp = [float(v) for v in getattr(ds, "ImagePositionPatient", [0, 0, 0])]
    x_dir, y_dir = np.array(iop[:3]), np.array(iop[3:])  # along a row (col index), down a column (row index)
    normal = np.cross(x_dir, y_dir)
    thickness = float(getattr(ds, "SliceThickness", 8.0) or 8.0)
    lps = np.eye(4)
    lps[:3, 0] = x_dir * spacing[1]
    lps[:3, 1] = y_dir * spacing[0]
    lps[:3, 2] = normal * thickness
    lps[:3, 3] = ipp
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# --------------------------------------------------------------------------- masks


def _read_labels(path: Path) -> np.ndarray:
    """Mask (T_m, H, W) uint8 from NIfTI (X×Y, X×Y×1, X×Y×1×T) or .npy ((H, W) or (T, H, W))."""
    from ecgflowcmr.io.formats import NUMPY_ERRORS, numpy_arrays

    if check_regular_file(path, "mask file").st_size == 0:
        raise InputError(path, "mask file is empty")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            data = _nifti_data(_load_nifti(path, "mask"), path)
            if data.ndim == 4 and data.shape[2] == 1:
                data = data[:, :, 0, :].transpose(2, 1, 0)
            elif data.ndim == 3 and data.shape[2] == 1:
                data = data[:, :, 0].T[None]
            elif data.ndim == 2:
                data = data.T[None]
            else:
                raise InputError(path, f"mask of shape {data.shape} (expected X×Y×1 or X×Y×1×T)")
        elif name.endswith(".npy"):
            numpy_arrays(path, max_bytes=8 * CINE_MAX_VOXELS)
            data = np.load(path, allow_pickle=False)
            data = data[None] if data.ndim == 2 else data
            if data.ndim != 3:
                raise InputError(path, f"mask of shape {data.shape} (expected H×W or T×H×W)")
        else:
            raise InputError(path, "mask must be NIfTI or .npy")
    except InputError:
        raise
    except NUMPY_ERRORS as err:
        raise InputError(path, f"unreadable mask ({type(err).__name__}: {err})") from None
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InputError(path, f"mask of dtype {data.dtype}: expected integer labels 0–{MASK_LABELS}")
    _check_cine_shape(path, *data.shape)
    if data.size and not (np.isfinite(data).all() and data.min() >= 0 and data.max() <= MASK_LABELS
                          and (data == np.round(data)).all()):
        raise InputError(path, f"mask values must be integer labels 0–{MASK_LABELS} "
                         f"(found {np.unique(data[np.isfinite(data)])[:8].tolist()} …)")
    return np.ascontiguousarray(data.astype(np.uint8))
