"""``ecgflowcmr generate``: ECG file or manifest → cine files, streamed in batches, resumable.

Outputs: one ECG file → ``OUT/<stem>.<ext>``; a manifest → ``OUT/<shard>/<subject_id>.<ext>`` with
``shard`` the first three hex digits of SHA-1(subject_id) (≤ 4096 folders, a few hundred files each at
10^6 ECGs). An item whose every requested file exists is skipped on rerun; each file is written under a
temporary name and renamed, so no partial file is ever visible. Items that fail (unreadable ECG, no
cardiac cycle) are listed in ``failed.csv`` (``failed-rank<R>.csv`` under torchrun) and the job goes on.
Under ``torchrun`` rank r takes items r, r + W, r + 2W, …
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ecgflowcmr.atomic import atomic_file
from ecgflowcmr.canonical import FS, N_FRAMES
from ecgflowcmr.errors import InputError

FORMATS = ("nii", "mp4", "gif", "npy")
SUFFIX = {"nii": ".nii.gz", "mp4": ".mp4", "gif": ".gif", "npy": ".npy"}


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


def item_seed(seed: int, subject_id: str) -> int:
    """The noise seed of one item: a function of (seed, subject_id) only, so reruns and batch sizes agree."""
    digest = hashlib.sha256(f"{seed}:{subject_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def frame_interval_s(rpeaks: np.ndarray) -> float:
    """Time between frames of a cine generated for an ECG: its median R-R interval / ``N_FRAMES`` (1 s when
    fewer than two R-peaks)."""
    rr = float(np.median(np.diff(rpeaks))) / FS if len(rpeaks) >= 2 else 1.0
    return rr / N_FRAMES


def shard_of(subject_id: str) -> str:
    return hashlib.sha1(subject_id.encode()).hexdigest()[:3]


def _items(ecg: Path, out: Path) -> list[tuple[str, Path, Path]]:
    """(subject_id, ecg path, output stem) for a single ECG file or every row of a manifest."""
    if ecg.suffix.lower() == ".csv":
        from ecgflowcmr.io.manifest import read_manifest

        manifest = read_manifest(ecg, required=("subject_id", "ecg_path"))
        items = []
        for row in manifest.rows:
            sid = row["subject_id"]
            try:
                path = manifest.resolve(row, "ecg_path")
            except InputError as err:  # recorded as a failure below, the batch goes on
                path = Path(f"<invalid: {err}>")
            items.append((sid, path, out / shard_of(sid) / sid))
        return items
    stem = ecg.name.split(".")[0]
    return [(stem, ecg, out / stem)]


def _write_outputs(stem: Path, frames01: np.ndarray, formats: list[str], spacing_mm: tuple[float, float],
                   frame_interval_s: float, fps: float) -> None:
    """Write one generated cine (50, 96, 96) in [0, 1] in each format; ``spacing_mm`` is (row, column)."""
    from ecgflowcmr.io.cmr import write_cine
    from ecgflowcmr.viz import write_video

    stem.parent.mkdir(parents=True, exist_ok=True)
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


def generate(model: str | Path, ecg: str | Path, out: str | Path, *, formats: list[str] | None = None,
             batch_size: int = 8, steps: int | None = None, seed: int = 0, guidance: float | None = None,
             sampler: str | None = None, device: str | None = None) -> GenerateSummary:
    """Generate cines for one ECG file or a manifest of ECGs (see the module docstring)."""
    from tqdm import tqdm

    from ecgflowcmr.io.ecg import read_ecg
    from ecgflowcmr.pipeline import load_pipeline

    formats = [f.strip() for f in (formats or ["nii"]) if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError("--format", f"unknown format(s) {bad} (choose from {', '.join(FORMATS)})")
    if batch_size < 1:
        raise InputError("--batch-size", "must be ≥ 1")
    ecg, out = Path(ecg), Path(out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    start = time.perf_counter()
    items = _items(ecg, out)[rank::world]
    pipe = load_pipeline(model, device=device)
    spacing = pipe.spacing_mm
    out.mkdir(parents=True, exist_ok=True)

    def done(stem: Path) -> bool:
        return all(stem.with_name(stem.name + SUFFIX[f]).exists() for f in formats)

    todo = [it for it in items if not done(it[2])]
    failed: list[tuple[str, str, str]] = []
    generated = 0
    bar = tqdm(total=len(todo), desc="generate", unit="video", disable=not _is_tty())
    for first in range(0, len(todo), batch_size):
        chunk = todo[first:first + batch_size]
        ecgs, kept = [], []
        for sid, path, stem in chunk:
            try:
                ecgs.append(read_ecg(path))
            except InputError as err:
                failed.append((sid, str(path), str(err)))
                continue
            kept.append((sid, path, stem))
        if ecgs:
            x = torch.from_numpy(np.stack([e.signal for e in ecgs]))
            intervals = [frame_interval_s(e.rpeaks) for e in ecgs]
            seeds = [item_seed(seed, sid) for sid, _, _ in kept]
            frames, valid = pipe.generate_batch(x, steps=steps, seed=seeds, guidance=guidance, method=sampler,
                                                rpeaks=[e.rpeaks for e in ecgs])
            for (sid, path, stem), video, ok, dt in zip(kept, frames, valid, intervals):
                if not ok:
                    failed.append((sid, str(path), f"{path}: no usable cardiac cycle (NaN, flat or no R-peaks)"))
                    continue
                _write_outputs(stem, video, formats, spacing, dt, fps=min(50.0, 1.0 / dt))
                generated += 1
        bar.update(len(chunk))
    bar.close()
    failed_name = "failed.csv" if world == 1 else f"failed-rank{rank}.csv"
    with atomic_file(out / failed_name) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject_id", "ecg_path", "reason"])
        writer.writerows(failed)
    t = pipe.timings
    return GenerateSummary(out, generated, len(items) - len(todo), len(failed), time.perf_counter() - start,
                           {"read": t.read, "encode_ecg": t.encode_ecg, "sample": t.sample, "decode": t.decode})


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
