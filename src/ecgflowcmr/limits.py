"""Size limits on what users bring, checked from headers before anything is inflated or allocated.

Each limit is a multiple of a canonical shape (ECG 12 × 5000 at 500 Hz, cine 50 × 96 × 96), chosen so that
every real input we know of passes with room to spare while a small hostile file (a zip bomb, a header
declaring 4900² images or 2·10⁹ frames) is refused in milliseconds instead of taking the machine. Every
limit is multiplied by the environment variable ``ECGFLOWCMR_LIMIT_SCALE`` (default 1): an environment
variable, not a config field, because the readers run from the Python API, ``inspect``, ``prepare``'s worker
processes and ``generate`` alike, and only the environment reaches all of them unchanged.

The README ("Limits and hostile input") lists the values and their reasons.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ecgflowcmr.canonical import LEADS, N_FRAMES, N_SAMPLES, SIZE
from ecgflowcmr.errors import InputError

SCALE_ENV = "ECGFLOWCMR_LIMIT_SCALE"

_ECG_LEADS, _ECG_SAMPLES = len(LEADS), N_SAMPLES  # canonical ECG: 12 leads × 10 s at 500 Hz
_CINE_FRAMES, _CINE_SIZE = N_FRAMES, SIZE  # canonical cine: 50 frames of 96 × 96

ECG_MAX_SAMPLES = 40 * _ECG_SAMPLES
"""Samples per lead in a source record: 10 s at the highest accepted rate (20 kHz), or 400 s at 500 Hz."""
ECG_MAX_CHANNELS = 3 * _ECG_LEADS
"""Channels in a source record: 12 leads plus room for Frank leads, pacing and marker channels."""
ECG_MAX_FILE_BYTES = ECG_MAX_SAMPLES * ECG_MAX_CHANNELS * 8
"""An ECG file (XML text, DICOM): ≤ 8 bytes per sample value (text counts with separators)."""
CINE_MAX_FRAMES = 5 * _CINE_FRAMES
"""Frames (cardiac phases) of a source cine: clinical cines hold 20–100."""
CINE_MAX_SIDE = 1024
"""Rows or columns of a source cine: twice the largest clinical cine matrix (512), 10.7 × the canonical 96."""
CINE_MAX_VOXELS = 64 * _CINE_FRAMES * _CINE_SIZE * _CINE_SIZE
"""T × H × W of a source cine (29.5 M, 118 MB as float32): 100 frames of 512 × 512 fit, UK Biobank's
50 × 208 × 187 is 1.9 M. Canonicalisation holds a few float32 copies: < 1 GB at the limit."""
CINE_MAX_FILES = 4 * CINE_MAX_FRAMES
"""Files in a DICOM series folder or zip (a mixed long-axis series holds 3 × T images, plus a manifest)."""
CINE_MAX_ARCHIVE_BYTES = 8 * CINE_MAX_VOXELS
"""Uncompressed bytes of a cine zip read in memory (three views of int16 pixels at the voxel limit)."""
MANIFEST_MAX_ROWS = 4_000_000
"""Rows of a manifest: 5 × MIMIC-IV-ECG (~800 k records); bounds the per-job set of subject ids."""
MANIFEST_MAX_ROW_CHARS = 1 << 16
"""Characters in one manifest row (all fields together)."""
ID_MAX_CHARS = 128
"""A subject_id names output files: with a shard folder, a suffix and a temporary prefix it stays far
below the 255-byte file-name limit of common filesystems."""
SAMPLER_MAX_STEPS = 1000
"""ODE steps of one generation: the bundles use 4–10, 64 already matches the exact solution to ~30 dB."""
GUIDANCE_MAX = 100.0
"""|classifier-free guidance scale|: useful values are 1–10."""


def scale() -> float:
    """The multiplier ``ECGFLOWCMR_LIMIT_SCALE`` (default 1) applied to every size limit."""
    raw = os.environ.get(SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise InputError(SCALE_ENV, f"must be a positive number, got {raw!r}")
    return value


def limit(value: int) -> int:
    """``value`` times :func:`scale`."""
    return int(value * scale())


def check_count(where: str | Path, what: str, count: float, maximum: int) -> None:
    """Refuse ``count`` (declared by a file's header) above ``maximum`` × scale, or not a finite count ≥ 0."""
    bound = limit(maximum)
    if not count >= 0 or count == float("inf"):
        raise InputError(where, f"{what} {count!r} is not a count")
    if count > bound:
        raise InputError(where, f"{what} {count:,.0f} exceeds the limit of {bound:,} "
                                f"(raise it with {SCALE_ENV}, see the README's 'Limits and hostile input')")


def check_regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """``path``'s stat when it is a regular file (after symlinks); a FIFO, device, folder, missing file or
    symlink loop is refused (reading a FIFO would block forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except OSError as err:  # ELOOP (symlink loop), ENAMETOOLONG, EACCES …
        raise InputError(path, f"cannot open {what} ({err.strerror or err})") from None
    except ValueError as err:  # an embedded NUL byte
        raise InputError(repr(str(path)), f"not a valid path ({err})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise InputError(path, f"{what} is {kind}")
    return st


MODEL_MAX_WIDTH = 8192
"""Channels, token widths and heads of a model config: 10 × the paper's widest (768)."""
MODEL_MAX_DEPTH = 96
"""Blocks per stack: 8 × the paper's deepest (12)."""


def check_model_sizes(prefix: str, config: object, widths: tuple[str, ...] = (), depths: tuple[str, ...] = (),
                      frames: tuple[str, ...] = (), sides: tuple[str, ...] = ()) -> None:
    """Refuse absurd sizes in a model config (``ConfigError`` naming ``prefix.field``) before anything is
    built: a config asking for a width of 10⁹ would otherwise allocate until the machine gives out."""
    from ecgflowcmr.errors import ConfigError

    for names, maximum in ((widths, MODEL_MAX_WIDTH), (depths, MODEL_MAX_DEPTH), (frames, CINE_MAX_FRAMES),
                           (sides, CINE_MAX_SIDE)):
        for name in names:
            values = getattr(config, name)
            for value in values if isinstance(values, tuple | list) else (values,):
                if value > limit(maximum):
                    raise ConfigError(f"{prefix}{name}", f"{value:,} exceeds the limit of {limit(maximum):,} "
                                      f"(raise it with {SCALE_ENV})")
