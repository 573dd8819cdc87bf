"""``ecgflowcmr generate``: ECG file or manifest → cine files, streamed in batches, resumable.

Outputs: one ECG file → ``OUT/<stem>.<ext>``; a manifest → ``OUT/<shard>/<subject_id>.<ext>`` with
``shard`` the first three hex digits of SHA-1(subject_id) (≤ 4096 folders, a few hundred files each at
10^6 ECGs). Every output name comes from an id checked by :func:`~ecgflowcmr.io.manifest.id_problem` (no
separator, no leading dot, no control character, ≤ 128 characters) and unique within the job (compared
case-insensitively); any other id is refused into ``failed.csv``.

The manifest is streamed row by row. An item whose every requested file exists is skipped on rerun; each
file is written under a temporary name and renamed, so no partial file is ever visible. Items that fail
(unreadable ECG, no cardiac cycle, non-finite output) are listed in ``failed.csv`` (``failed-rank<R>.csv``
under torchrun) and the job goes on; a single ECG file that fails raises InputError. ``OUT/generate.json``
records the job's settings (bundle digest, seed, steps, guidance, sampler, formats); a rerun with other
settings is refused. Under ``torchrun`` rank r takes items r, r + W, r + 2W, …
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ecgflowcmr.atomic import atomic_file, ensure_dir, write_text_atomic
from ecgflowcmr.canonical import FS, N_FRAMES
from ecgflowcmr.errors import InputError
from ecgflowcmr.pipeline import item_seed as item_seed  # its owner is the inference layer

if TYPE_CHECKING:
    from ecgflowcmr.pipeline import Pipeline

FORMATS = ("nii", "mp4", "gif", "npy")
SUFFIX = {"nii": ".nii.gz", "mp4": ".mp4", "gif": ".gif", "npy": ".npy"}
SETTINGS_FILE = "generate.json"
ENFORCED_SETTINGS = ("bundle_digest", "seed", "steps", "guidance", "sampler", "formats", "condition")
"""Settings a resumed job must share with the one that wrote the folder (batch_size is recorded only: it
changes results by float rounding, ≤ 1e-5)."""


@dataclass
class GenerateSummary:
    out: Path
    generated: int
    skipped_existing: int
    failed: int
    seconds: float
    timings: dict[str, float]

    def __str__(self) -> str:
        per = self.seconds / max(self.generated, 1)
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        return (f"{self.out}: generated {self.generated}, already there {self.skipped_existing}, "
                f"failed {self.failed} (failed.csv); {self.seconds:.1f} s ({per:.2f} s/video; {parts})")


@dataclass
class _Item:
    subject_id: str
    ecg: str
    """The ECG path as given (or resolved), for messages and failed.csv."""
    path: Path | None = None
    stem: Path | None = None
    """Output path without suffix; None when the item is refused (``problem``)."""
    problem: str | None = None


def frame_interval_s(rpeaks: np.ndarray) -> float:
    """Time between frames of a cine generated for an ECG: its median R-R interval / ``N_FRAMES`` (1 s when
    fewer than two R-peaks)."""
    rr = float(np.median(np.diff(rpeaks))) / FS if len(rpeaks) >= 2 else 1.0
    return rr / N_FRAMES


def shard_of(subject_id: str) -> str:
    return hashlib.sha1(subject_id.encode()).hexdigest()[:3]


def _items(ecg: Path, out: Path) -> Iterator[_Item]:
    """One item per ECG: the single file, or each manifest row in order (refused rows carry their problem)."""
    from ecgflowcmr.io.manifest import id_problem, read_manifest

    if ecg.suffix.lower() != ".csv":
        stem = ecg.name.split(".")[0]
        problem = id_problem(stem)
        yield _Item(stem, str(ecg), ecg, None if problem else out / stem,
                    f"{ecg}: cannot name an output after this file ({problem})" if problem else None)
        return
    manifest = read_manifest(ecg, required=("subject_id", "ecg_path"))
    seen: set[str] = set()
    for line in manifest.iter_rows():
        row = line.values
        sid, where = row["subject_id"], f"{manifest.path} (line {line.line})"
        problem = line.problem or id_problem(sid)
        if problem is None and sid.casefold() in seen:
            problem = f"subject_id {sid!r} appears more than once (the first row is generated)"
        seen.add(sid.casefold())
        if problem is not None:
            yield _Item(sid, row.get("ecg_path", ""), problem=f"{where}: {problem}")
            continue
        try:
            path = manifest.resolve(row, "ecg_path")
        except InputError as err:
            yield _Item(sid, row["ecg_path"], problem=str(err))
            continue
        if path is None:
            yield _Item(sid, "", problem=f"{where}: subject {sid!r} has an empty ecg_path")
            continue
        yield _Item(sid, str(path), path, out / shard_of(sid) / sid)


def _controlled(items: Iterator[_Item], subjects: Collection[str] | None,
                shuffle_seed: int | None) -> Iterator[_Item]:
    """The items of ``subjects`` only (all when None); with ``shuffle_seed``, each valid item reads the ECG
    of another valid item (a seeded permutation; output name and noise seed stay its own)."""
    if subjects is not None:
        wanted = set(subjects)
        items = (it for it in items if it.subject_id in wanted)
    if shuffle_seed is None:
        yield from items
        return
    items = list(items)
    valid = [i for i, it in enumerate(items) if it.problem is None]
    order = np.random.default_rng(shuffle_seed).permutation(len(valid))
    ecgs = {i: (items[valid[j]].ecg, items[valid[j]].path) for i, j in zip(valid, order)}
    for i, it in enumerate(items):
        if i in ecgs:
            it.ecg, it.path = ecgs[i]
        yield it


def _write_outputs(stem: Path, frames01: np.ndarray, formats: list[str], spacing_mm: tuple[float, float],
                   frame_interval_s: float, fps: float) -> None:
    """Write one generated cine (50, 96, 96) in [0, 1] in each format; ``spacing_mm`` is (row, column)."""
    from ecgflowcmr.io.cmr import write_cine
    from ecgflowcmr.viz.video import write_video

    ensure_dir(stem.parent)
    for fmt in formats:
        target = stem.with_name(stem.name + SUFFIX[fmt])
        if fmt == "nii":  # the canonical writer: read_cine(target).frames01 is frames01, bit for bit
            write_cine(target, frames01, spacing_mm=spacing_mm, frame_interval_s=frame_interval_s)
            continue
        with atomic_file(target) as tmp:
            if fmt == "npy":
                with open(tmp, "wb") as fh:
                    np.save(fh, frames01.astype(np.float32))
            else:
                write_video(frames01, tmp, fps=fps)


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse an output folder written with other settings (or by something else); record ours."""
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(path, f"unreadable ({err}); delete it only if the folder's outputs can go") from None
        if not isinstance(old, dict):
            raise InputError(path, "not a generate settings record")
        old.setdefault("condition", "ecg")  # recorded before the downstream controls existed
        changed = [f"{k} {old.get(k)!r} → {settings[k]!r}" for k in ENFORCED_SETTINGS if old.get(k) != settings[k]]
        if changed:
            raise InputError(out, "holds outputs generated with other settings (" + "; ".join(changed) +
                             "): rerun with the same settings to resume, or choose a new --out folder")
        return
    foreign = [p.name for p in out.iterdir() if not p.name.startswith(".tmp-")]
    if foreign:
        raise InputError(out, f"is not empty and has no {SETTINGS_FILE} (holds {', '.join(sorted(foreign)[:3])} …): "
                         "choose a new --out folder")
    write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


def generate(model: str | Path, ecg: str | Path, out: str | Path, *, formats: list[str] | None = None,
             batch_size: int = 8, steps: int | None = None, seed: int = 0, guidance: float | None = None,
             sampler: str | None = None, device: str | None = None, subjects: Collection[str] | None = None,
             shuffle_seed: int | None = None, null_condition: bool = False) -> GenerateSummary:
    """Generate cines for one ECG file or a manifest of ECGs (see the module docstring).

    Controls for the downstream experiment: ``subjects`` keeps only those manifest rows; ``shuffle_seed``
    gives each kept subject the ECG of another (a seeded permutation), its own noise seed and output name
    unchanged; ``null_condition`` samples without the ECG (see ``Pipeline.generate_batch``). Both are
    recorded in ``generate.json`` as ``condition``.
    """
    from tqdm import tqdm

    from ecgflowcmr.bundle import bundle_digest
    from ecgflowcmr.pipeline import load_pipeline

    formats = [f.strip() for f in (formats or ["nii"]) if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError("--format", f"unknown format(s) {bad} (choose from {', '.join(FORMATS)})")
    if batch_size < 1:
        raise InputError("--batch-size", "must be ≥ 1")
    ecg, out = Path(ecg), Path(out)
    single = ecg.suffix.lower() != ".csv"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    start = time.perf_counter()
    pipe = load_pipeline(model, device=device)
    sampling = pipe.sampling_settings(steps, guidance, sampler)
    ensure_dir(out)
    _check_settings(out, {"bundle": str(pipe.bundle.resolve()), "bundle_digest": bundle_digest(pipe.bundle),
                          "seed": seed, "steps": sampling["steps"], "guidance": sampling["guidance"],
                          "sampler": sampling["method"], "formats": sorted(set(formats)), "batch_size": batch_size,
                          "condition": "null" if null_condition else
                          "ecg" if shuffle_seed is None else f"shuffled:{shuffle_seed}"})

    def done(stem: Path) -> bool:
        return all(stem.with_name(stem.name + SUFFIX[f]).exists() for f in formats)

    failed: list[tuple[str, str, str]] = []
    generated = skipped = 0
    bar = tqdm(desc="generate", unit="video", disable=not _is_tty())

    def run(batch: list[_Item]) -> None:
        nonlocal generated
        generated += _generate_batch(pipe, batch, sampling, seed, formats, failed, null_condition)
        bar.update(len(batch))

    batch: list[_Item] = []
    for index, item in enumerate(_controlled(_items(ecg, out), subjects, shuffle_seed)):
        if index % world != rank:
            continue
        if item.problem is not None:
            failed.append((item.subject_id, item.ecg, item.problem))
        elif done(item.stem):
            skipped += 1
        else:
            batch.append(item)
            if len(batch) == batch_size:
                run(batch)
                batch = []
    if batch:
        run(batch)
    bar.close()
    failed_name = "failed.csv" if world == 1 else f"failed-rank{rank}.csv"
    _write_failed(out / failed_name, failed)
    if single and failed:
        raise InputError(ecg, failed[0][2].removeprefix(f"{ecg}: "))
    t = pipe.timings
    return GenerateSummary(out, generated, skipped, len(failed), time.perf_counter() - start,
                           {"read": t.read, "encode_ecg": t.encode_ecg, "sample": t.sample, "decode": t.decode})


def _generate_batch(pipe: Pipeline, batch: list[_Item], sampling: dict[str, Any], seed: int, formats: list[str],
                    failed: list[tuple[str, str, str]], null_condition: bool = False) -> int:
    """Read the batch's ECGs, generate their cines and write them; items that fail are appended to
    ``failed`` as (subject_id, ecg, reason). Returns the number of cines written."""
    from ecgflowcmr.io.ecg import read_ecg

    ecgs, kept = [], []
    for item in batch:
        try:
            ecgs.append(read_ecg(item.path))
        except InputError as err:
            failed.append((item.subject_id, item.ecg, str(err)))
            continue
        kept.append(item)
    if not ecgs:
        return 0
    x = torch.from_numpy(np.stack([e.signal for e in ecgs]))
    intervals = [frame_interval_s(e.rpeaks) for e in ecgs]
    problems: list[str] = []
    frames, valid = pipe.generate_batch(x, steps=sampling["steps"], guidance=sampling["guidance"],
                                        method=sampling["method"], problems=problems,
                                        seed=[item_seed(seed, it.subject_id) for it in kept],
                                        rpeaks=[e.rpeaks for e in ecgs], null_condition=null_condition)
    written = 0
    for item, video, ok, why, dt in zip(kept, frames, valid, problems, intervals):
        if not ok:
            failed.append((item.subject_id, item.ecg, f"{item.ecg}: {why}"))
            continue
        _write_outputs(item.stem, video, formats, pipe.spacing_mm, dt, fps=min(50.0, 1.0 / dt))
        written += 1
    return written


def _write_failed(path: Path, failed: list[tuple[str, str, str]]) -> None:
    """failed.csv: one row per refused item; cells that a spreadsheet would run as formulas are escaped."""
    from ecgflowcmr.io.manifest import spreadsheet_safe

    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject_id", "ecg_path", "reason"])
        writer.writerows([spreadsheet_safe(cell) for cell in row] for row in failed)


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
