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
