"""Which format a user's file is in, from its name and first bytes (never from trust in the suffix alone)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

from ecgflowcmr.errors import InputError
from ecgflowcmr.limits import check_count, check_regular_file

EcgFormat = Literal["wfdb", "ukb_xml", "muse_xml", "dicom_ecg", "npy_ecg"]
CineFormat = Literal["nifti", "dicom_series", "ukb_zip", "npy_cine"]

ECG_FORMATS: tuple[str, ...] = ("wfdb", "ukb_xml", "muse_xml", "dicom_ecg", "npy_ecg")
CINE_FORMATS: tuple[str, ...] = ("nifti", "dicom_series", "ukb_zip", "npy_cine")


def sniff(path: str | Path) -> str:
    """One of ``ECG_FORMATS`` or ``CINE_FORMATS``; raises InputError for anything else.

    A WFDB record may be named by its ``.hea``, its ``.dat`` or without extension.
    """
    path = checked_path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom_series"
    if name.endswith((".hea", ".dat")) or (not path.suffix and path.with_suffix(".hea").exists()):
        return "wfdb"
    if check_regular_file(path).st_size == 0:
        raise InputError(path, "file is empty")
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".zip"):
        if not zipfile.is_zipfile(path):
            raise InputError(path, "not a valid zip archive")
        return "ukb_zip"
    if name.endswith((".npy", ".npz")):
        return _sniff_numpy(path)
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if name.endswith(".dcm") or head[128:132] == b"DICM":
        return _sniff_dicom(path)
    text = _xml_head(head)
    if name.endswith(".xml") or text.lstrip().startswith("<"):
        if "<CardiologyXML" in text:
            return "ukb_xml"
        if "<RestingECG" in text:
            return "muse_xml"
        raise InputError(path, "XML is neither UK Biobank CardioSoft (CardiologyXML) nor GE MUSE (RestingECG)")
    raise InputError(path, "unrecognised format (expected WFDB, XML, DICOM, NIfTI, zip or .npy/.npz)")


def checked_path(path: str | Path) -> Path:
    """``path`` as a Path, refused when no file system call could take it (a NUL byte, a name or path too
    long, a symlink loop): these raise ValueError/OSError from ``Path.is_dir`` and friends otherwise."""
    text = str(path)
    if "\0" in text:
        raise InputError(repr(text), "path contains a NUL byte")
    path = Path(path)
    try:
        path.is_dir()
        if path.name and not path.suffix:
            path.with_suffix(".hea").exists()  # sniff probes the WFDB header beside a bare record name
    except OSError as err:
        raise InputError(text[:200], f"not a usable path ({err.strerror or err})") from None
    return path


def _xml_head(head: bytes) -> str:
    """The first bytes as text: UTF-16 when a byte-order mark says so (some MUSE exports), else Latin-1."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head.decode("utf-16", errors="ignore")
    return head.removeprefix(b"\xef\xbb\xbf").decode("latin-1")


def _sniff_dicom(path: Path) -> str:
    """A DICOM file is an ECG when it holds a WaveformSequence; an image file alone is refused."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise InputError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from None
    if "WaveformSequence" in ds:
        return "dicom_ecg"
    what = f"a DICOM {ds.get('Modality', '')} image".replace("  ", " ")
    raise InputError(path, f"{what} without a WaveformSequence, not an ECG; for a cine pass its series folder")


def _sniff_numpy(path: Path) -> str:
    shape = next(iter(numpy_arrays(path).values()))[0]
    if len(shape) == 2:
        return "npy_ecg"
    if len(shape) in (3, 4):
        return "npy_cine"
    raise InputError(path, f"array of shape {shape} is neither an ECG (leads × samples) nor a cine (T×H×W)")


NUMPY_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError)
"""What numpy/zipfile raise for corrupt, truncated, encrypted or unsupported files (never a pickle: every
load passes ``allow_pickle=False``)."""


def numpy_arrays(path: str | Path, max_bytes: int = 0) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{name: (shape, dtype)}`` of a ``.npy`` (name ``""``) or each ``.npz`` member, from headers only.

    Nothing is inflated: an ``.npz`` member's size comes from its zip entry, its shape from the ``.npy``
    header at the start of the member. Refused (InputError): an empty archive, encrypted or unsupported
    compression (e.g. Deflate64), object or complex arrays, and data larger than ``max_bytes`` × the
    limit scale (``max_bytes`` 0: no size check here).
    """
    import numpy as np

    path = Path(path)
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    try:
        if not path.name.lower().endswith(".npz"):
            with open(path, "rb") as fh:
                out[""] = _npy_header(fh, path)
        else:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    check_zip_member(path, info)
                    if max_bytes:
                        check_count(f"{path}:{info.filename}", "uncompressed bytes", info.file_size, max_bytes)
                    with zf.open(info) as fh:
                        out[info.filename.removesuffix(".npy")] = _npy_header(fh, path)
    except InputError:
        raise
    except NUMPY_ERRORS as err:
        raise InputError(path, f"not a readable numpy file ({type(err).__name__}: {err})") from None
    if not out:
        raise InputError(path, "npz archive holds no arrays")
    for name, (shape, dtype) in out.items():
        where = f"{path}:{name}" if name else path
        if dtype.hasobject or dtype.fields is not None:
            raise InputError(where, f"array of dtype {dtype} is not numeric (object or structured arrays are refused)")
        if dtype.kind == "c":
            raise InputError(where, f"complex-valued array ({dtype}): an ECG or image is real")
        if max_bytes:
            check_count(where, "array bytes", int(np.prod(shape, dtype=np.float64)) * dtype.itemsize, max_bytes)
    return out


def _npy_header(fh: Any, path: Path) -> tuple[tuple[int, ...], Any]:
    import numpy as np

    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise InputError(path, f".npy format version {version} is not supported (1.0 or 2.0)")
    return tuple(int(n) for n in shape), dtype


ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def check_zip_member(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse a zip entry Python cannot read safely: encrypted, or compressed by an unsupported method
    (Deflate64, PPMd …)."""
    if info.flag_bits & 0x1:
        raise InputError(f"{path}:{info.filename}", "encrypted zip entry")
    if info.compress_type not in ZIP_METHODS:
        raise InputError(f"{path}:{info.filename}", f"zip compression method {info.compress_type} is not "
                         "supported (stored, deflate, bzip2, lzma)")


def is_ecg(fmt: str) -> bool:
    return fmt in ECG_FORMATS
