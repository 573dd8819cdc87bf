"""The training store (docs/formats.md): fixed-shape, memory-mapped arrays per split, built by ``prepare``.

Layout::

    STORE/store.json                       version, shapes, dtypes, counts, preprocessing
    STORE/skipped.csv                      subject_id, split, reason (one row per refused item)
    STORE/<split>/ecg.npy                  float16 (N, 12, 5000), mV
    STORE/<split>/phase.npy                float16 (N, 5000), radians in [0, 2π), NaN = unknown
    STORE/<split>/cine.npy                 uint8 (N, 50, 96, 96), round((x + 1) · 127.5) of x ∈ [-1, 1]
    STORE/<split>/rows.csv                 the manifest rows that made it + what preprocessing did

``prepare`` works in ``STORE.partial/`` (preallocated arrays + an append-only log of finished items, so an
interrupted run resumes where it stopped) and renames it to ``STORE`` only when complete: a store that
exists is whole. The manifest is streamed three times (sizes, items, rows.csv), never held whole; free disk
space is checked before the arrays are preallocated. :class:`StoreDataset` reads items by index with no per-item file parsing.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgflowcmr.atomic import atomic_file, ensure_dir, write_text_atomic
from ecgflowcmr.canonical import LEADS, N_FRAMES, N_SAMPLES, SIZE
from ecgflowcmr.errors import InputError
from ecgflowcmr.io.manifest import PAIRED_SPLITS, SPLITS, Manifest, read_manifest, spreadsheet_safe

STORE_VERSION = 1
ECG_SHAPE = (len(LEADS), N_SAMPLES)
CINE_SHAPE = (N_FRAMES, SIZE, SIZE)
FIELDS = ("ecg", "phase", "cine")


# --------------------------------------------------------------------------------------------------
# Reading one item (runs in worker processes)
# --------------------------------------------------------------------------------------------------


@dataclass
class PreparedItem:
    """One manifest row turned into arrays, or the reason it was refused."""

    position: int
    ecg: np.ndarray | None = None
    phase: np.ndarray | None = None
    cine: np.ndarray | None = None
    notes: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def cine_to_uint8(frames: np.ndarray) -> np.ndarray:
    """[-1, 1] float → uint8 codes (the store's cine encoding)."""
    return np.round((np.clip(frames, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def cine_from_uint8(codes: np.ndarray) -> np.ndarray:
    """uint8 codes → float32 in [-1, 1]."""
    return codes.astype(np.float32) / 127.5 - 1.0


def prepare_item(manifest: Manifest, row: dict[str, str], position: int, paired: bool) -> PreparedItem:
    """Read, canonicalise and label one row. User-data problems become ``error``, never an exception."""
    from ecgflowcmr.io.cmr import read_cine
    from ecgflowcmr.io.ecg import read_ecg
    from ecgflowcmr.signal.phase import phase_from_rpeaks

    item = PreparedItem(position)
    try:
        ecg_path = manifest.resolve(row, "ecg_path")
        if ecg_path is None:
            raise InputError(f"{manifest.path} (subject {row['subject_id']})", "empty ecg_path")
        ecg = read_ecg(ecg_path)
        rpeaks = ecg.rpeaks  # found by read_ecg on the record's real (unpadded) part
        phase = phase_from_rpeaks(rpeaks)
        if len(rpeaks) < 2:
            raise InputError(ecg_path, "fewer than two R-peaks detected on lead II: no cardiac cycle")
        item.ecg = ecg.signal.astype(np.float16)
        item.phase = phase.astype(np.float16)
        item.notes["ecg_flags"] = "; ".join(ecg.flags)
        item.notes["n_rpeaks"] = str(len(rpeaks))
        if paired:
            cmr_path = manifest.resolve(row, "cmr_path")
            if cmr_path is None:
                raise InputError(f"{manifest.path} (subject {row['subject_id']})",
                                 f"split {row['split']!r} needs a cine but cmr_path is empty")
            mask_path = manifest.resolve(row, "mask_path")
            cine = read_cine(cmr_path, mask=mask_path)
            item.cine = cine_to_uint8(cine.frames)
            item.notes["cine_flags"] = "; ".join(cine.flags)
            item.notes["cine_spacing_mm"] = " ".join(f"{v:.4g}" for v in cine.spacing_mm)
            item.notes["cine_frame_interval_s"] = f"{cine.frame_interval_s:.5g}"
    except InputError as err:
        item.error = str(err)
    except Exception as err:  # a reader bug must not kill a batch of 10^5 items: record it
        item.error = f"{row.get('subject_id', '?')}: unexpected {type(err).__name__}: {err}"
    return item


_WORKER_MANIFEST: Manifest | None = None


def _init_worker(manifest: Manifest) -> None:
    global _WORKER_MANIFEST
    _WORKER_MANIFEST = manifest
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _work(task: tuple[dict[str, str], int, bool]) -> PreparedItem:
    assert _WORKER_MANIFEST is not None
    return prepare_item(_WORKER_MANIFEST, *task)


# --------------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------------


@dataclass
class PrepareSummary:
    store: Path
    counts: dict[str, int]
    skipped: list[tuple[str, str, str]]
    handled: int
    seconds: float
    items_per_s: float

    def __str__(self) -> str:
        lines = [f"store {self.store}: " + ", ".join(f"{k} {v}" for k, v in self.counts.items())]
        lines.append(f"{self.handled} item(s) were adjusted (resampled, padded, filled; see rows.csv)")
        lines.append(f"{len(self.skipped)} item(s) skipped (see skipped.csv)")
        lines += [f"  skipped {sid} ({split}): {reason}" for sid, split, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  … and {len(self.skipped) - 20} more")
        lines.append(f"{self.seconds:.1f} s, {self.items_per_s:.1f} items/s")
        return "\n".join(lines)


def _classify(manifest: Manifest) -> Iterator[tuple[dict[str, str], str, int | None, str | None]]:
    """Each manifest row (streamed) with its split, its position among the accepted rows of that split, and
    why it is refused up front (unusable row, empty or repeated subject_id, unknown split) — position None
    then. The same for every pass over the file, so passes agree on positions."""
    seen: set[str] = set()
    positions = dict.fromkeys(SPLITS, 0)
    for line in manifest.iter_rows():
        row = line.values
        sid, split = row["subject_id"], row["split"]
        reason = None
        if line.problem:
            reason = f"{manifest.path} (line {line.line}): {line.problem}"
        elif not sid:
            reason = f"{manifest.path}: row with empty subject_id"
        elif sid in seen:
            reason = f"{manifest.path}: subject_id {sid!r} appears more than once"
        elif split not in SPLITS:
            reason = f"{manifest.path}: unknown split {split!r} (expected one of {SPLITS})"
        seen.add(sid)
        if reason is None:
            yield row, split, positions[split], None
            positions[split] += 1
        else:
            yield row, split, None, reason


def prepare(manifest_path: str | Path, out: str | Path, workers: int = 1) -> PrepareSummary:
    """Preprocess every row of a manifest into the store at ``out``; bad items go to ``skipped.csv``.

    Resumable: rerunning after an interruption continues from ``out.partial``; a finished store is
    not rebuilt (delete it to rebuild).
    """
    start = time.perf_counter()
    manifest = read_manifest(manifest_path)
    out = Path(out)
    if (out / "store.json").exists():
        raise InputError(out, "a complete store already exists here (delete it to rebuild)")
    if out.exists():
        raise InputError(out, "exists and is not a store; choose a new folder")
    sizes, refused = dict.fromkeys(SPLITS, 0), []
    for row, split, _, reason in _classify(manifest):  # first pass: sizes, for the pre-allocation
        if reason is None:
            sizes[split] += 1
        else:
            refused.append((row["subject_id"], split, reason))
    sizes = {split: n for split, n in sizes.items() if n}
    partial = out.with_name(out.name + ".partial")
    ensure_dir(partial, "store folder")
    log_path = partial / "progress.jsonl"
    done = _read_progress(log_path)

    _check_free_space(partial, sizes)
    arrays = {split: _open_partial_arrays(partial / split, n, split in PAIRED_SPLITS) for split, n in sizes.items()}
    tasks = ((row, position, split) for row, split, position, reason in _classify(manifest)  # second pass
             if reason is None and f"{split}/{position}" not in done)
    with open(log_path, "a") as log:
        for split, item in _run_items(manifest, tasks, workers):
            if item.error is None:
                arr = arrays[split]
                arr["ecg"][item.position] = item.ecg
                arr["phase"][item.position] = item.phase
                if item.cine is not None:
                    arr["cine"][item.position] = item.cine
                for a in arr.values():
                    a.flush()
            record = {"key": f"{split}/{item.position}", "error": item.error, "notes": item.notes}
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[record["key"]] = record
    del arrays  # close the memmaps before compaction

    kept, failed, handled = _write_rows(partial, manifest, sizes, done)  # third pass
    counts = {}
    for split in sizes:
        _compact(partial / split, kept[split], split in PAIRED_SPLITS)
        counts[split] = len(kept[split])
    skipped = refused + [item for split in sizes for item in failed[split]]

    _write_csv(partial / "skipped.csv", ["subject_id", "split", "reason"],
               [[spreadsheet_safe(cell) for cell in row] for row in skipped])
    meta = {
        "version": STORE_VERSION,
        "created_by": "ecgflowcmr",
        "manifest": str(Path(manifest_path).resolve()),
        "splits": counts,
        "shapes": {"ecg": list(ECG_SHAPE), "phase": [ECG_SHAPE[1]], "cine": list(CINE_SHAPE)},
        "dtypes": {"ecg": "float16 mV", "phase": "float16 rad, NaN unknown", "cine": "uint8 (x+1)*127.5"},
        "preprocessing": {
            "ecg": "canonical 12×5000 mV at 500 Hz (read_ecg)",
            "phase": "linear 0→2π between R-peaks on lead II (phase_labels), NaN outside",
            "cine": "canonical 50×96×96 (read_cine: 50 frames over the cycle, heart crop, resize, "
                    "per-sample percentile normalisation)",
        },
    }
    (partial / "store.json").write_text(json.dumps(meta, indent=2))
    log_path.unlink()
    os.replace(partial, out)
    seconds = time.perf_counter() - start
    n_items = sum(sizes.values())
    return PrepareSummary(out, counts, skipped, handled, seconds, n_items / max(seconds, 1e-9))


def _was_adjusted(notes: dict[str, str]) -> bool:
    """Whether reading changed more than the routine heart crop (resampled, padded, filled, derived …)."""
    flags = [f for key in ("ecg_flags", "cine_flags") for f in notes.get(key, "").split("; ") if f]
    return any(not f.startswith("crop") for f in flags)


def _read_progress(log_path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line from an interruption: redo that item
            done[record["key"]] = record
    return done


def _item_bytes(paired: bool) -> int:
    """Bytes one item takes in the store: ECG and phase float16, cine uint8 for the paired splits."""
    return 2 * (ECG_SHAPE[0] * ECG_SHAPE[1] + ECG_SHAPE[1]) + (int(np.prod(CINE_SHAPE)) if paired else 0)


def _check_free_space(partial: Path, counts: dict[str, int]) -> None:
    """Refuse to start when the arrays would not fit on the disk. They are created sparse (memory-mapped)
    and filled item by item: without this check a full disk surfaces as SIGBUS in the middle of a write."""
    needed = 0
    for split, n in counts.items():
        for name in ("ecg", "phase", "cine"):
            existing = partial / split / f"{name}.npy"
            if existing.exists():  # a resumed run: count only what is still unwritten (blocks in use)
                needed -= existing.stat().st_blocks * 512
        needed += n * _item_bytes(split in PAIRED_SPLITS)
    free = shutil.disk_usage(partial).free
    margin = 64 << 20  # rows.csv, skipped.csv, the progress log and the compaction of refused items
    if needed + margin > free:
        raise InputError(partial, f"needs {(needed + margin) / 2**30:.2f} GiB of free disk space for "
                         f"{sum(counts.values()):,} items, {free / 2**30:.2f} GiB is free")


def _open_partial_arrays(folder: Path, n: int, paired: bool) -> dict[str, np.memmap]:
    folder.mkdir(parents=True, exist_ok=True)
    specs = {"ecg": (np.float16, (n, *ECG_SHAPE)), "phase": (np.float16, (n, ECG_SHAPE[1]))}
    if paired:
        specs["cine"] = (np.uint8, (n, *CINE_SHAPE))
    arrays = {}
    for name, (dtype, shape) in specs.items():
        path = folder / f"{name}.npy"
        mode = "r+" if path.exists() else "w+"
        arrays[name] = np.lib.format.open_memmap(path, mode=mode, dtype=dtype, shape=shape)
    return arrays


def _run_items(manifest: Manifest, tasks: Iterable[tuple[dict[str, str], int, str]],
               workers: int) -> Iterator[tuple[str, PreparedItem]]:
    """(split, item) for each task (row, position, split), in order; ``tasks`` is consumed a chunk at a time
    (a pool would otherwise pull the whole manifest into its queue)."""
    if workers <= 1:
        for row, position, split in tasks:
            yield split, prepare_item(manifest, row, position, split in PAIRED_SPLITS)
        return
    # fork where the platform has it: workers inherit the imported readers (a spawned worker re-imports
    # scipy.signal, neurokit2 and friends: seconds each)
    import ecgflowcmr.io.cmr
    import ecgflowcmr.io.ecg
    import ecgflowcmr.signal.phase  # noqa: F401  (imported once, before the fork)

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    tasks = iter(tasks)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(manifest,)) as pool:
        while chunk := list(itertools.islice(tasks, 256 * workers)):
            work = [(row, position, split in PAIRED_SPLITS) for row, position, split in chunk]
            yield from zip([split for _, _, split in chunk], pool.imap(_work, work, chunksize=4))


def _write_rows(partial: Path, manifest: Manifest, sizes: dict[str, int], done: dict[str, dict[str, Any]]
                ) -> tuple[dict[str, list[int]], dict[str, list[tuple[str, str, str]]], int]:
    """Write each split's ``rows.csv`` (the manifest row + what preprocessing noted) streaming the manifest
    once more; returns the kept positions and the failed items per split, and how many were adjusted."""
    columns = {}
    for split, n in sizes.items():  # the manifest's columns, then the notes' keys in first-seen order
        notes = [done[f"{split}/{i}"]["notes"] for i in range(n) if not done[f"{split}/{i}"]["error"]]
        extra = [k for k in dict.fromkeys(k for note in notes for k in note) if k not in manifest.columns]
        columns[split] = manifest.columns + extra if notes else ["subject_id"]
    kept: dict[str, list[int]] = {split: [] for split in sizes}
    failed: dict[str, list[tuple[str, str, str]]] = {split: [] for split in sizes}
    handled = 0
    with contextlib.ExitStack() as stack:
        writers = {}
        for split in sizes:
            tmp = stack.enter_context(atomic_file(partial / split / "rows.csv"))
            writers[split] = csv.writer(stack.enter_context(open(tmp, "w", newline="")))
            writers[split].writerow(columns[split])
        for row, split, position, reason in _classify(manifest):
            if reason is not None:
                continue
            record = done[f"{split}/{position}"]
            if record["error"]:
                failed[split].append((row["subject_id"], split, record["error"]))
                continue
            merged = {**row, **record["notes"]}
            handled += _was_adjusted(record["notes"])
            kept[split].append(position)
            writers[split].writerow([merged.get(c, "") for c in columns[split]])
    return kept, failed, handled


def _compact(folder: Path, positions: list[int], paired: bool) -> None:
    """Drop refused rows from the preallocated arrays (in place when nothing was refused)."""
    names = ["ecg", "phase"] + (["cine"] if paired else [])
    for name in names:
        path = folder / f"{name}.npy"
        src = np.load(path, mmap_mode="r")
        if len(positions) != len(src):
            tmp = folder / f".{name}.compact.npy"
            needed = len(positions) * int(np.prod(src.shape[1:])) * src.dtype.itemsize
            if needed > shutil.disk_usage(folder).free:  # the memory-mapped copy would SIGBUS on a full disk
                raise InputError(folder, f"needs {needed / 2**30:.2f} GiB free to drop refused items from "
                                 f"{name}.npy; free some space and rerun (finished items are kept)")
            dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(positions), *src.shape[1:]))
            for start in range(0, len(positions), 256):
                dst[start:start + 256] = src[positions[start:start + 256]]
            dst.flush()
            del dst, src
            os.replace(tmp, path)


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# Reading the store
# --------------------------------------------------------------------------------------------------


def read_store_meta(store: str | Path) -> dict[str, Any]:
    store = Path(store)
    meta_path = store / "store.json"
    if not meta_path.exists():
        hint = " (an interrupted prepare? rerun it)" if store.with_name(store.name + ".partial").exists() else ""
        raise InputError(store, f"not a complete store: store.json missing{hint}")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != STORE_VERSION:
        raise InputError(meta_path, f"store version {meta.get('version')} is not {STORE_VERSION}; prepare it again")
    return meta


def split_size(store: str | Path, split: str) -> int:
    """Items in one split of a complete store (0 when the store has no such split)."""
    return int(read_store_meta(store)["splits"].get(split, 0))


class StoreDataset:
    """One split of a store as a torch Dataset of dicts (memory-mapped; no per-item parsing).

    Item: ``ecg`` float32 (12, 5000) mV; ``phase`` float32 (5000,) rad, NaN unknown;
    ``cine`` float32 (1, 50, 96, 96) in [-1, 1]; ``index`` int64 — for the requested ``fields``.
    """

    def __init__(self, store: str | Path, split: str, fields: tuple[str, ...] = FIELDS):
        self.store = Path(store)
        meta = read_store_meta(self.store)
        if split not in meta["splits"]:
            raise InputError(self.store, f"has no split {split!r} (has: {', '.join(meta['splits'])})")
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise InputError(self.store, f"unknown field(s) {sorted(unknown)} (known: {FIELDS})")
        if "cine" in fields and split not in PAIRED_SPLITS:
            raise InputError(self.store, f"split {split!r} has no cines")
        self.split = split
        self.fields = tuple(fields)
        self.folder = self.store / split
        self._n = int(meta["splits"][split])
        self._arrays: dict[str, np.ndarray] | None = None
        self._rows: list[dict[str, str]] | None = None

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> list[dict[str, str]]:
        """The manifest rows (plus preprocessing notes) in item order."""
        if self._rows is None:
            with open(self.folder / "rows.csv", newline="") as fh:
                self._rows = list(csv.DictReader(fh))
        return self._rows

    def array(self, name: str) -> np.ndarray:
        """The whole memory-mapped array of a field (e.g. for vectorised evaluation)."""
        if self._arrays is None:  # opened lazily, so each DataLoader worker maps its own
            self._arrays = {f: np.load(self.folder / f"{f}.npy", mmap_mode="r") for f in self.fields}
        return self._arrays[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        if not 0 <= index < self._n:
            raise IndexError(index)
        item: dict[str, Any] = {"index": torch.tensor(index, dtype=torch.int64)}
        if "ecg" in self.fields:
            item["ecg"] = torch.from_numpy(self.array("ecg")[index].astype(np.float32))
        if "phase" in self.fields:
            item["phase"] = torch.from_numpy(self.array("phase")[index].astype(np.float32))
        if "cine" in self.fields:
            item["cine"] = torch.from_numpy(cine_from_uint8(self.array("cine")[index])[None])
        return item


def write_store(out: str | Path, splits: dict[str, dict[str, np.ndarray]], rows: dict[str, list[dict]] | None = None) -> Path:
    """Write a complete store directly from arrays (tests, synthetic data). Arrays as in the layout above;
    ``cine`` may be float in [-1, 1] (encoded here) or uint8."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    counts = {}
    for split, arrays in splits.items():
        folder = partial / split
        folder.mkdir(parents=True)
        n = len(arrays["ecg"])
        np.save(folder / "ecg.npy", arrays["ecg"].astype(np.float16))
        np.save(folder / "phase.npy", arrays["phase"].astype(np.float16))
        if "cine" in arrays:
            cine = arrays["cine"]
            np.save(folder / "cine.npy", cine if cine.dtype == np.uint8 else cine_to_uint8(cine))
        split_rows = (rows or {}).get(split) or [{"subject_id": f"{split}-{i}", "split": split} for i in range(n)]
        columns = list(dict.fromkeys(k for r in split_rows for k in r))
        _write_csv(folder / "rows.csv", columns, [[r.get(c, "") for c in columns] for r in split_rows])
        counts[split] = n
    _write_csv(partial / "skipped.csv", ["subject_id", "split", "reason"], [])
    meta = {"version": STORE_VERSION, "created_by": "ecgflowcmr.write_store", "splits": counts,
            "shapes": {"ecg": list(ECG_SHAPE), "phase": [ECG_SHAPE[1]], "cine": list(CINE_SHAPE)}}
    write_text_atomic(partial / "store.json", json.dumps(meta, indent=2))
    os.replace(partial, out)
    return out
