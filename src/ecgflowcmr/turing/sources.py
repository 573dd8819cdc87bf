"""Where the cines of a Turing study come from: a store split, a manifest, or a folder of NIfTI cines.

A source is named by one string (``SRC`` on the command line):

- ``STORE`` or ``STORE:SPLIT`` — a store from ``ecgflowcmr prepare`` (a folder holding ``store.json``);
  the split defaults to ``test``. The store's cines are canonical already (uint8 codes of [-1, 1]).
- ``MANIFEST.csv`` or ``MANIFEST.csv:SPLIT`` — every row with a ``cmr_path`` (of that split), read with
  :func:`~ecgflowcmr.io.cmr.read_cine` (and its ``mask_path``, which places the heart crop).
- ``FOLDER`` — every ``*.nii`` / ``*.nii.gz`` below it (``ecgflowcmr generate`` writes sharded
  sub-folders), read with :func:`~ecgflowcmr.io.cmr.read_cine`.

Every source yields the canonical cine: float32 (50, 96, 96) in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgflowcmr.canonical import N_FRAMES, SIZE
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.manifest import PAIRED_SPLITS, read_manifest
from ecgflowcmr.store.prepared import cine_from_uint8, read_store_meta

DEFAULT_STORE_SPLIT = "test"


@dataclass(frozen=True)
class CineRef:
    """One cine a source can deliver. ``origin`` says where it came from (kept in the hidden key only)."""

    kind: str
    """``store``, ``manifest`` or ``nifti``."""
    path: Path
    """The store folder, the cine file."""
    index: int = -1
    """Row in the store split (``store`` only)."""
    split: str = ""
    mask: Path | None = None
    subject: str = ""

    @property
    def origin(self) -> str:
        if self.kind == "store":
            return f"store {self.path}:{self.split} item {self.index} ({self.subject})"
        return f"{self.kind} {self.path}" + (f" ({self.subject})" if self.subject else "")


def list_cines(src: str) -> list[CineRef]:
    """Every cine ``src`` names, in a fixed order (module docstring: the forms of ``src``)."""
    path, split = _split_suffix(src)
    if path.is_dir() and (path / "store.json").exists():
        return _store_cines(path, split or DEFAULT_STORE_SPLIT)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _manifest_cines(path, split)
    if split is not None:
        raise InputError(src, "':SPLIT' applies to a store or a manifest, not to a folder of NIfTI cines")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz"))
                       and not p.name.startswith("."))
        if not files:
            raise InputError(path, "holds no store.json and no .nii/.nii.gz cines")
        return [CineRef("nifti", p, subject=p.name.split(".")[0]) for p in files]
    raise InputError(src, "not a store folder, a manifest .csv or a folder of NIfTI cines")


def load_cine(ref: CineRef) -> np.ndarray:
    """The canonical cine a reference names: float32 (50, 96, 96) in [-1, 1]."""
    if ref.kind == "store":
        codes = np.load(ref.path / ref.split / "cine.npy", mmap_mode="r")[ref.index]
        return cine_from_uint8(np.asarray(codes))
    from ecgflowcmr.io.cmr import read_cine

    frames = read_cine(ref.path, mask=ref.mask).frames
    if frames.shape != (N_FRAMES, SIZE, SIZE):  # read_cine promises the canonical grid; say so if it breaks
        raise InputError(ref.path, f"canonical cine is {frames.shape}, expected {(N_FRAMES, SIZE, SIZE)}")
    return frames


def _split_suffix(src: str) -> tuple[Path, str | None]:
    """``PATH:SPLIT`` → (PATH, SPLIT) when PATH exists; else (src, None). A path may contain ':'."""
    head, sep, tail = src.rpartition(":")
    if sep and head and tail and "/" not in tail and Path(head).exists():
        return Path(head), tail
    return Path(src), None


def _store_cines(store: Path, split: str) -> list[CineRef]:
    meta = read_store_meta(store)
    if split not in meta["splits"]:
        raise InputError(store, f"has no split {split!r} (has: {', '.join(meta['splits'])})")
    if split not in PAIRED_SPLITS:
        raise InputError(store, f"split {split!r} has no cines (cines are in {', '.join(PAIRED_SPLITS)})")
    import csv

    with open(store / split / "rows.csv", newline="") as fh:
        subjects = [row.get("subject_id", "") for row in csv.DictReader(fh)]
    n = int(meta["splits"][split])
    return [CineRef("store", store, index=i, split=split, subject=subjects[i] if i < len(subjects) else "")
            for i in range(n)]


def _manifest_cines(path: Path, split: str | None) -> list[CineRef]:
    manifest = read_manifest(path, required=("subject_id", "cmr_path"))
    refs = []
    for row in manifest.rows:
        if split is not None and row.get("split") != split:
            continue
        cine = manifest.resolve(row, "cmr_path")
        if cine is None:
            continue
        refs.append(CineRef("manifest", cine, split=row.get("split", ""), subject=row["subject_id"],
                            mask=manifest.resolve(row, "mask_path")))
    if not refs:
        which = f" in split {split!r}" if split is not None else ""
        raise InputError(path, f"no row with a cmr_path{which}")
    return refs
