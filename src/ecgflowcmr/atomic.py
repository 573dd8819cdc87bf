"""Nothing half-written is ever visible: write under a temporary name, then rename.

``os.replace`` is atomic on POSIX within one filesystem, so a reader sees either the old file or the
complete new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ecgflowcmr.errors import InputError


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    The temporary name keeps the final suffix (``.x.nii.gz.tmp-PID`` would confuse writers that infer
    the format from the suffix), so it is ``.tmp-PID.<name>``.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    tmp = _temp_sibling(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file so that it appears whole or not at all."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """``mkdir -p path``; what makes it fail (a file in the way or above it, a read-only or full disk)
    becomes a one-line InputError naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(path, f"cannot be the {what}: it is a file") from None
    except NotADirectoryError:
        raise InputError(path, f"cannot be the {what}: a parent of it is a file") from None
    except (OSError, ValueError) as err:  # EACCES, EROFS, ENOSPC, ENAMETOOLONG; ValueError: a NUL byte
        raise InputError(path, f"cannot create the {what} ({getattr(err, 'strerror', None) or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(path, f"the {what} is not writable")
    return path
