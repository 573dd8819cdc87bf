"""Which format a user's file is in, from its name and first bytes (never from trust in the suffix alone)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

from ecgflowcmr.errors import InputError

EcgFormat = Literal["wfdb", "ukb_xml", "muse_xml", "dicom_ecg", "npy_ecg"]
CineFormat = Literal["nifti", "dicom_series", "ukb_zip", "npy_cine"]

ECG_FORMATS: tuple[str, ...] = ("wfdb", "ukb_xml", "muse_xml", "dicom_ecg", "npy_ecg")
CINE_FORMATS: tuple[str, ...] = ("nifti", "dicom_series", "ukb_zip", "npy_cine")


def sniff(path: str | Path) -> str:
    """One of ``ECG_FORMATS`` or ``CINE_FORMATS``; raises InputError for anything else.

    A WFDB record may be named by its ``.hea``, its ``.dat`` or without extension.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom_series"
    if name.endswith((".hea", ".dat")) or (not path.suffix and path.with_suffix(".hea").exists()):
        return "wfdb"
    if not path.exists():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
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
    import numpy as np

    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if not keys:
                    raise InputError(path, "npz archive holds no arrays")
                shape = npz[keys[0]].shape
        else:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except InputError:
        raise
    except Exception as err:  # numpy raises several types for corrupt files
        raise InputError(path, f"not a readable numpy file ({type(err).__name__})") from None
    if len(shape) == 2:
        return "npy_ecg"
    if len(shape) in (3, 4):
        return "npy_cine"
    raise InputError(path, f"array of shape {shape} is neither an ECG (leads × samples) nor a cine (T×H×W)")


def is_ecg(fmt: str) -> bool:
    return fmt in ECG_FORMATS
