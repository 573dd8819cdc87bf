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
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.canonical import SIZE
from ecgflowcmr.errors import InputError

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
_MAX_ZIP_BYTES = 2 << 30


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


def _read_nifti(path: Path) -> _RawCine:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from None
    header = img.header
    zooms = [float(z) for z in header.get_zooms()]
    _, time_unit = header.get_xyzt_units()
    shape = data.shape
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    data = data.reshape(shape)
    dims = "×".join(str(s) for s in shape)
    if len(shape) < 3:
        raise InputError(path, f"a single 2-D image ({dims}), not a cine (expected X×Y×1×T)")
    if len(shape) == 3:
        if time_unit == "unknown":
            raise InputError(path, f"3-D volume {dims} with no time axis (third axis spacing "
                             f"{zooms[2]:g} mm), not a cine; expected X×Y×1×T (or X×Y×T with time units set)")
        data = data[:, :, None, :]
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
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                data = npz[next(iter(npz.keys()))]
        else:
            data = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for corrupt files
        raise InputError(path, f"not a readable numpy file ({type(err).__name__})") from None
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

    items = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.stat().st_size == 0:
            continue
        try:
            items.append((file.name, pydicom.dcmread(file)))
        except InvalidDicomError:
            continue  # a manifest, a README, a thumbnail: not part of the series
        except Exception as err:
            raise InputError(file, f"unreadable DICOM file ({type(err).__name__}: {err})") from None
    return _series_to_raw(path, items, {}, require_4ch=False)


def _read_ukb_zip(path: Path) -> _RawCine:
    """UK Biobank field 20208 zip: DICOMs + manifest.csv (or .cvs), read in memory, nothing extracted."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(path, f"not a readable zip archive ({err})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > _MAX_ZIP_BYTES:
            raise InputError(path, "zip expands to more than 2 GiB; not a single cine")
        descriptions: dict[str, str] = {}
        items = []
        for member in members:
            base = member.filename.rsplit("/", 1)[-1]
            try:
                blob = zf.read(member)
            except (zipfile.BadZipFile, OSError, ValueError) as err:
                raise InputError(f"{path}:{member.filename}", f"unreadable zip member ({err})") from None
            if base.lower() in ("manifest.csv", "manifest.cvs"):
                descriptions = _parse_ukb_manifest(blob.decode("latin-1"))
                continue
            try:
                items.append((base, pydicom.dcmread(io.BytesIO(blob))))
            except InvalidDicomError:
                continue
            except Exception as err:
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
    first = items[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    images: list[np.ndarray | None] = [None] * t
    for slot, (name, ds) in zip(slots, items):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(where, f"{name} is {ds.Rows}×{ds.Columns} but the series is {rows}×{cols}")
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as err:  # no decoder for the transfer syntax, or corrupt pixel data
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
    spacing = tuple(float(v) for v in getattr(first, "PixelSpacing", [0, 0]))
    if len(spacing) != 2 or min(spacing) <= 0:
        flags.append(f"PixelSpacing missing: assumed {DEFAULT_SPACING_MM} mm")
        spacing = (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM)
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
    if not path.exists():
        raise InputError(path, "mask file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "mask file is empty")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            data = np.asarray(nib.load(str(path)).dataobj)
            if data.ndim == 4 and data.shape[2] == 1:
                data = data[:, :, 0, :].transpose(2, 1, 0)
            elif data.ndim == 3 and data.shape[2] == 1:
                data = data[:, :, 0].T[None]
            elif data.ndim == 2:
                data = data.T[None]
            else:
                raise InputError(path, f"mask of shape {data.shape} (expected X×Y×1 or X×Y×1×T)")
        elif name.endswith(".npy"):
            data = np.load(path, allow_pickle=False)
            data = data[None] if data.ndim == 2 else data
            if data.ndim != 3:
                raise InputError(path, f"mask of shape {data.shape} (expected H×W or T×H×W)")
        else:
            raise InputError(path, "mask must be NIfTI or .npy")
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"unreadable mask ({type(err).__name__}: {err})") from None
    data = np.asarray(data)
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > 255:
        raise InputError(path, "mask values must be labels 0–5")
    return np.ascontiguousarray(np.round(data).astype(np.uint8))
