"""Synthetic cines for pretraining, read back through ``read_cine`` like real ones and packed once into
``cines.npy`` (uint8, the store's encoding) so that pretraining reads them memory-mapped."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np

from ecgflowcmr.atomic import atomic_file, write_text_atomic
from ecgflowcmr.downstream.experiment import SyntheticPool
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.cmr import read_cine
from ecgflowcmr.store.prepared import CINE_SHAPE, cine_to_uint8


def pack_pool(source: str, files: list[tuple[str, Path]], folder: Path) -> SyntheticPool:
    """Read each ``(subject_id, cine file)`` with :func:`read_cine` into ``folder/cines.npy`` +
    ``subjects.csv``; missing or unreadable files are left out (listed in ``folder/unreadable.csv``).
    Reuses a finished pack made from the same files (``folder/files.sha256``: their names, sizes and
    modification times), so a folder pointed elsewhere, or a file replaced, is packed anew."""
    folder = Path(folder)
    cines, ids_path, stamp = folder / "cines.npy", folder / "subjects.csv", folder / "files.sha256"
    fingerprint = _fingerprint(files)
    if cines.exists() and ids_path.exists() and stamp.exists() and stamp.read_text().strip() == fingerprint:
        with open(ids_path, newline="") as fh:
            ids = [r["subject_id"] for r in csv.DictReader(fh)]
        return SyntheticPool(source, np.load(cines, mmap_mode="r"), ids)
    stamp.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / ".cines.partial.npy"
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(files), *CINE_SHAPE))
    kept, bad = [], []
    for sid, path in files:
        try:
            array[len(kept)] = cine_to_uint8(read_cine(path).frames)
            kept.append(sid)
        except (InputError, FileNotFoundError) as err:
            bad.append((sid, str(path), str(err)))
    array.flush()
    del array
    final = np.load(partial, mmap_mode="r")[:len(kept)]
    with atomic_file(cines) as tmp:
        np.save(tmp, np.ascontiguousarray(final))
    del final
    os.remove(partial)
    for name, header, rows in (("unreadable.csv", ["subject_id", "path", "reason"], bad),
                               ("subjects.csv", ["subject_id"], [[s] for s in kept])):
        with atomic_file(folder / name) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    write_text_atomic(stamp, fingerprint + "\n")  # last: the pack is whole
    return SyntheticPool(source, np.load(cines, mmap_mode="r"), kept)


def _fingerprint(files: list[tuple[str, Path]]) -> str:
    """sha256 over each (subject, path, size, mtime) in order; a missing file counts as missing."""
    digest = hashlib.sha256()
    for sid, path in files:
        try:
            st = os.stat(path)
            digest.update(f"{sid}\t{Path(path).resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{sid}\t{path}\tmissing\n".encode())
    return digest.hexdigest()
