"""ECG format decoders: each supported file → ``_Decoded``, the record as the file holds it.

``_Decoded`` is (n_leads, n) float64 in mV at the file's own rate, lead names as written; the decoders
only parse and scale to mV. Everything else (lead matching, NaN repair, derived leads, resampling, quality)
is ``ecg.py``'s canonicalisation, which dispatches here by format (``ecg._decode``). Kept apart from
``ecg.py`` so that each reads in one sitting; this module never imports ``ecg.py`` (the canonical lead
order is passed in where a file names none).
"""

from __future__ import annotations

import base64
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.errors import InputError
from ecgflowcmr.limits import (
    ECG_MAX_CHANNELS,
    ECG_MAX_FILE_BYTES,
    ECG_MAX_SAMPLES,
    check_count,
    check_regular_file,
)

WFDB_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OSError, EOFError,
               ZeroDivisionError, OverflowError)
"""What ``wfdb`` raises for malformed headers and data files (it validates little itself)."""
DICOM_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OSError, EOFError,
                ZeroDivisionError, OverflowError, NotImplementedError)
"""What ``pydicom`` raises for malformed elements, unsupported encodings or truncated data."""
MAX_HEADER_BYTES = 1 << 20
"""A WFDB header: one line per signal plus comments; 1 MiB is far more than any real one."""

_MV_PER_UNIT: dict[str, float] = {
    "nv": 1e-6, "nanovolt": 1e-6, "nanovolts": 1e-6,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "v": 1e3, "volt": 1e3, "volts": 1e3,
}  # fmt: skip


@dataclass
class _Decoded:
    """A record as the file holds it: (n_leads, n) float64 mV at ``fs``, names as written."""

    signal: np.ndarray
    fs: float
    names: list[str]
    format: str
    flags: list[str] = field(default_factory=list)


def _mv_per_unit(unit: str, path: Path, where: str) -> float:
    key = unit.strip().lower().replace("μ", "µ")
    if key not in _MV_PER_UNIT:
        raise InputError(path, f"{where}: unknown amplitude unit {unit!r} (expected µV, mV or V)")
    return _MV_PER_UNIT[key]


def _decode_wfdb(path: Path) -> _Decoded:
    import wfdb

    base = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    header = base.with_name(base.name + ".hea")
    size = check_regular_file(header, "WFDB header (.hea)").st_size
    if size == 0:
        raise InputError(header, "file is empty")
    if size > MAX_HEADER_BYTES:
        raise InputError(header, f"a {size:,}-byte WFDB header is not an ECG header")
    fast = _read_wfdb_format16(header, path)
    if fast is not None:
        return fast
    try:
        meta = wfdb.rdheader(str(base))
    except WFDB_ERRORS as err:
        raise InputError(header, f"unreadable WFDB header ({type(err).__name__}: {err})") from None
    _check_wfdb_header(meta, header)
    try:
        rec = wfdb.rdrecord(str(base))
    except WFDB_ERRORS as err:
        raise InputError(path, f"unreadable WFDB record ({type(err).__name__}: {err})") from None
    if rec.p_signal is None or rec.n_sig == 0:
        raise InputError(path, "WFDB record holds no signals")
    if rec.sig_name is None or len(rec.sig_name) != rec.n_sig:
        raise InputError(path, "WFDB header names no leads (signal descriptions missing)")
    units = rec.units or ["mV"] * rec.n_sig  # WFDB's default unit is mV
    scale = np.array([_mv_per_unit(u or "mV", path, f"lead {n}") for u, n in zip(units, rec.sig_name)])
    signal = rec.p_signal.T.astype(np.float64) * scale[:, None]
    return _Decoded(signal, float(rec.fs), list(rec.sig_name), "wfdb")


def _check_wfdb_header(meta: Any, header: Path) -> None:
    """Sizes and data file names a header declares, checked before ``rdrecord`` reads anything."""
    if getattr(meta, "n_seg", None) not in (None, 1) or getattr(meta, "seg_name", None):
        raise InputError(header, "multi-segment WFDB records are not supported")
    check_count(header, "signal count", meta.n_sig or 0, ECG_MAX_CHANNELS)
    check_count(header, "samples per signal", meta.sig_len or 0, ECG_MAX_SAMPLES)
    for name in set(meta.file_name or []):
        _wfdb_data_file(header, name)


def _wfdb_data_file(header: Path, name: str) -> Path:
    """The data file a header names: a plain name beside the header, a regular file (never a FIFO)."""
    if not name or name != Path(name).name or name in (".", "..") or "\0" in name:
        raise InputError(header, f"data file name {name!r} must be a plain file name beside the header")
    dat = header.with_name(name)
    check_regular_file(dat, "WFDB data file")
    return dat


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
    check_count(header, "signal count", n_sig, ECG_MAX_CHANNELS)
    check_count(header, "samples per signal", n_samples, ECG_MAX_SAMPLES)
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
    if len(files) != 1:
        return None
    dat = _wfdb_data_file(header, next(iter(files)))
    digital = np.fromfile(dat, dtype="<i2", count=n_samples * n_sig)
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

    size = check_regular_file(path).st_size
    check_count(path, "file bytes", size, ECG_MAX_FILE_BYTES)
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


def _scale(text: str | None, path: Path, what: str) -> float:
    """An amplitude resolution (units per count): finite and > 0 (a negative one would flip the ECG)."""
    value = _float(text, path, what)
    if not (np.isfinite(value) and value > 0):
        raise InputError(path, f"{what}: expected a positive resolution, got {(text or '').strip()!r}")
    return value


def _count(text: str | None, path: Path, what: str) -> int:
    """A sample count written in a file: a finite integer ≥ 0 (``nan``, ``inf``, ``-3``, ``2.5`` refused)."""
    value = _float(text, path, what)
    if not (np.isfinite(value) and value >= 0 and value == int(value)):
        raise InputError(path, f"{what}: expected a sample count, got {(text or '').strip()!r}")
    return int(value)


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
    mv_per_count = _scale(res.text, path, "StripData/Resolution") * _mv_per_unit(unit, path, "Resolution")
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
    if total is not None and _count(total, path, "ChannelSampleCountTotal") != signal.shape[1]:
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
    exponent = _float(wave.findtext("SampleExponent") or "0", path, "Waveform/SampleExponent")
    if not -3 <= exponent <= 3:  # MUSE writes 0; 10^±3 already spans every plausible rate
        raise InputError(path, f"Waveform/SampleExponent {exponent:g} is not a plausible power of ten")
    fs *= 10.0**exponent
    names, rows = [], []
    for lead in wave.iter("LeadData"):
        name = (lead.findtext("LeadID") or "").strip()
        gain = _scale(lead.findtext("LeadAmplitudeUnitsPerBit"), path, f"lead {name} LeadAmplitudeUnitsPerBit")
        unit = _mv_per_unit(lead.findtext("LeadAmplitudeUnits") or "", path, f"lead {name} LeadAmplitudeUnits")
        try:
            raw = base64.b64decode("".join((lead.findtext("WaveFormData") or "").split()), validate=True)
        except ValueError:
            raise InputError(path, f"lead {name}: WaveFormData is not valid base64") from None
        if len(raw) % 2:
            raise InputError(path, f"lead {name}: odd byte count {len(raw)} for int16 samples (truncated?)")
        counts = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        expected = lead.findtext("LeadSampleCountTotal")
        if expected is not None and _count(expected, path, "LeadSampleCountTotal") != counts.size:
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

    check_count(path, "file bytes", check_regular_file(path).st_size, ECG_MAX_FILE_BYTES)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, *DICOM_ERRORS) as err:
        raise InputError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from None
    try:
        return _dicom_waveform(ds, path)
    except InputError:  # a ValueError too: pass it through unwrapped
        raise
    except DICOM_ERRORS as err:  # a malformed element deep in the sequence
        raise InputError(path, f"malformed DICOM waveform ({type(err).__name__}: {err})") from None


def _dicom_waveform(ds: Any, path: Path) -> _Decoded:
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
    where = f"{path} (WaveformSequence[{index}])"
    channels = int(item.get("NumberOfWaveformChannels", 0) or 0)
    if channels < 1:
        raise InputError(where, "NumberOfWaveformChannels is 0: no ECG channels")
    check_count(where, "channel count", channels, ECG_MAX_CHANNELS)
    check_count(where, "samples per channel", int(item.get("NumberOfWaveformSamples", 0) or 0), ECG_MAX_SAMPLES)
    names, scale = [], []
    for k, ch in enumerate(item.get("ChannelDefinitionSequence", [])):
        source = ch.get("ChannelSourceSequence", [])
        names.append(str(source[0].get("CodeMeaning", "")) if source else f"channel {k}")
        units = ch.get("ChannelSensitivityUnitsSequence", [])
        if "ChannelSensitivity" not in ch or not units:
            raise InputError(path, f"channel {names[-1]!r} has no ChannelSensitivity/units: counts cannot be scaled")
        _scale(str(ch.ChannelSensitivity), path, f"channel {names[-1]!r} ChannelSensitivity")
        scale.append(_mv_per_unit(str(units[0].get("CodeValue", "")), path, f"channel {names[-1]!r}"))
    try:
        arr = ds.waveform_array(index)
    except DICOM_ERRORS as err:
        raise InputError(path, f"WaveformSequence[{index}] unreadable ({type(err).__name__}: {err})") from None
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise InputError(path, f"{arr.shape[1:]} channels but {len(names)} channel definitions")
    signal = arr.T.astype(np.float64) * np.asarray(scale)[:, None]
    return _Decoded(signal, float(item.SamplingFrequency), names, "dicom_ecg")


def _decode_numpy(path: Path, fs: float | None, leads: tuple[str, ...]) -> _Decoded:
    """``.npy`` (12, N) or (N, 12) in mV; ``.npz`` the same under ``ecg``/``signal`` (or its only array),
    optionally with ``fs`` and ``leads`` arrays beside it. ``leads``: the canonical order (``ecg.LEADS``),
    assumed when the file names none."""
    from ecgflowcmr.io.formats import NUMPY_ERRORS, numpy_arrays

    names: list[str] | None = None
    headers = numpy_arrays(path, max_bytes=ECG_MAX_FILE_BYTES)
    keys = [k for k in ("ecg", "signal") if k in headers] or [k for k in headers if k not in ("fs", "leads")]
    if len(keys) != 1:
        raise InputError(path, f"npz holds arrays {list(headers)}: name the ECG 'ecg' or 'signal'")
    shape = headers[keys[0]][0]
    if len(shape) == 2:
        check_count(path, "samples per lead", max(shape), ECG_MAX_SAMPLES)
        check_count(path, "leads", min(shape), ECG_MAX_CHANNELS)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arr = np.asarray(npz[keys[0]])
                if fs is None and "fs" in npz:
                    stored = np.asarray(npz["fs"])
                    if stored.size != 1 or not np.issubdtype(stored.dtype, np.number):
                        raise InputError(path, f"'fs' must be one number, got {stored.dtype} {stored.shape}")
                    fs = float(stored.reshape(()))
                if "leads" in npz:
                    names = [str(n) for n in np.atleast_1d(npz["leads"])]
        else:
            arr = np.load(path, allow_pickle=False)
    except InputError:
        raise
    except NUMPY_ERRORS as err:
        raise InputError(path, f"not a readable numpy file ({type(err).__name__}: {err})") from None
    if fs is None:
        raise InputError(path, "a .npy/.npz ECG carries no sampling rate: pass fs= (e.g. read_ecg(path, fs=500))")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(path, f"expected a numeric (12, N) or (N, 12) array, got {arr.dtype} {arr.shape}")
    n_leads = len(names) if names else len(leads)
    flags = ["units assumed mV (numpy array)"]
    if arr.shape[0] == n_leads and arr.shape[1] != n_leads:
        signal = arr
    elif arr.shape[1] == n_leads and arr.shape[0] != n_leads:
        signal = arr.T
        flags.append(f"transposed ({arr.shape[0]}, {n_leads}) → ({n_leads}, {arr.shape[0]})")
    else:
        raise InputError(path, f"array of shape {arr.shape}: expected ({n_leads}, N) or (N, {n_leads}) with N > {n_leads}")
    if names is None:
        names = list(leads)
        flags.append("lead order assumed canonical (I II III aVR aVL aVF V1–V6)")
    return _Decoded(signal.astype(np.float64), float(fs), names, "npy_ecg", flags)


def _stack_equal(rows: list[np.ndarray], names: list[str], path: Path) -> np.ndarray:
    lengths = {row.size for row in rows}
    if len(lengths) != 1:
        detail = ", ".join(f"{n}={r.size}" for n, r in zip(names, rows))
        raise InputError(path, f"leads have different lengths ({detail})")
    return np.stack(rows)
