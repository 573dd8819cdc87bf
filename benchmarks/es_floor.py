"""The end-systolic frame error a perfect generator would score on the phantom, in the instrument's units.

    .venv/bin/python benchmarks/es_floor.py [--n 400] [--seed 1] [--segmenter runs/demo/evaluation/segmenter]

A cine is acquired apart from the ECG, so which beat it shows is not in the ECG: the phantom draws it from
the record's middle beat and its two neighbours (``ECGResult.candidate_beats``), whose end-systoles differ
with the beat-to-beat R-R (respiratory arrhythmia, R-R variability, QT following the preceding R-R). This
script renders every subject's cine on each of the three beats (same anatomy and image noise) and reads each
one's end-systolic frame with the evaluation instrument's rule (``readout.chamber_measures`` on the true
masks' areas, so no segmenter error is in it; with ``--segmenter``, also as the instrument reads it: each
cine written, read and canonicalised as ``prepare`` does, then segmented). It prints, in frames:

- a **perfect sampler**: a generator that draws from the true p(cine | ECG), scored against the real cine
  (both beats independent and equally likely) — the floor of the instrument's "ES own" for any generator
  that samples (only a fixed guess per ECG goes lower: the point predictor below);
- the same with a **swapped** ECG (another subject's real cine), and the ratio swapped / own;
- a **perfect point predictor**: the median of the three beats' end-systoles, the best any single guess
  from the ECG record can do.

Seed 1, 400 subjects: the held-out cohort of ``demo --recipe small`` (≈ 7 min with the segmenter on 2 cores).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ecgflowcmr.evaluation.readout import chamber_measures
from ecgflowcmr.evaluation.segmentation import Segmenter, load_segmenter
from ecgflowcmr.io.cmr import read_cine, write_nifti_cine
from ecgflowcmr.phantom import PhantomConfig, simulate_subject
from ecgflowcmr.phantom.cine import Cine
from ecgflowcmr.store.prepared import cine_to_uint8

N_CLASSES = 5


def mask_areas(masks: np.ndarray, spacing_mm: float) -> np.ndarray:
    """(T, H, W) labels → (T, 5) areas in mm² of classes 1–5, the instrument's layout."""
    counts = np.stack([(masks == c).sum(axis=(1, 2)) for c in range(1, N_CLASSES + 1)], axis=-1)
    return counts * spacing_mm**2


def canonical(cine: Cine, folder: Path) -> np.ndarray:
    """The cine as the instrument gets it from a store: written as the phantom writes it, read with its mask,
    kept in the store's uint8 codes → (50, 96, 96) in [0, 1]."""
    frames, mask = folder / "cine.nii.gz", folder / "mask.nii.gz"
    for path, arr in ((frames, cine.frames), (mask, cine.masks)):
        write_nifti_cine(path, arr, (cine.spacing_mm, cine.spacing_mm), cine.frame_interval_s)
    return cine_to_uint8(read_cine(frames, mask=mask).frames).astype(np.float32) / 255.0


def end_systoles(n: int, seed: int, cfg: PhantomConfig, segmenter: Segmenter | None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(n, 3) end-systolic frames of each subject's cine on each candidate beat from the true masks, the same
    as the segmenter reads them (None without one), and (n,) the drawn beat's index."""
    es, shown = np.empty((n, 3)), np.empty(n, dtype=np.int64)
    es_seg = np.empty((n, 3)) if segmenter is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            drawn = simulate_subject(i, seed, cfg, with_cine=False).ecg
            shown[i] = next(k for k, b in enumerate(drawn.candidate_beats) if b.rpeak == drawn.cine_rpeak)
            cines = [simulate_subject(i, seed, cfg, with_cine=True, beat=k).cine for k in range(3)]
            areas = np.stack([mask_areas(c.masks, c.spacing_mm) for c in cines])
            es[i] = chamber_measures(areas)["es_frame"]
            if es_seg is not None:
                seg_areas, _ = segmenter.analyse(np.stack([canonical(c, Path(tmp)) for c in cines]))
                es_seg[i] = chamber_measures(seg_areas)["es_frame"]
    return es, es_seg, shown


def circular_gap(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """|a − b| on the cycle of ``frames`` frames, as the instrument scores end-systole."""
    d = np.abs(a - b) % frames
    return np.minimum(d, frames - d)


def report(es: np.ndarray, shown: np.ndarray, frames: int, what: str) -> None:
    """The three references' errors from (n, 3) end-systoles, as a table."""
    n = len(es)
    real = es[np.arange(n), shown]
    # Every (real beat, sampled beat) pair is equally likely: the expectation over the 3 × 3 pairs.
    own = circular_gap(es[:, :, None], es[:, None, :], frames).mean(axis=(1, 2))
    # Swapped: another subject's real cine against this subject's draws (a fixed derangement, i → i + 1).
    swapped = circular_gap(np.roll(real, 1)[:, None], es, frames).mean(axis=1)
    point = circular_gap(np.median(es, axis=1), real, frames)
    spread = es.max(axis=1) - es.min(axis=1)
    print(f"\n{what}\n")
    print("| reference | ES error, frames (mean) | median | 90th pct |")
    print("|---|---|---|---|")
    for name, v in (("perfect sampler, own ECG", own), ("perfect sampler, swapped ECG", swapped),
                    ("perfect point predictor (median of the 3 beats)", point)):
        print(f"| {name} | {v.mean():.3f} | {np.median(v):.3f} | {np.quantile(v, 0.9):.3f} |")
    print(f"\nswapped / own for the perfect sampler: {swapped.mean() / own.mean():.2f}×; end-systole's spread over "
          f"the 3 candidate beats: mean {spread.mean():.2f}, median {np.median(spread):.2f} frames, "
          f"{np.mean(spread >= 1):.0%} of subjects ≥ 1 frame")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="subjects (cines rendered: 3 per subject)")
    ap.add_argument("--seed", type=int, default=1, help="phantom cohort seed (1: the held-out cohort of `small`)")
    ap.add_argument("--segmenter", type=Path, help="a trained segmenter folder: also read as the instrument does")
    args = ap.parse_args()
    cfg = PhantomConfig()
    segmenter = load_segmenter(args.segmenter) if args.segmenter else None
    t0 = time.perf_counter()
    es, es_seg, shown = end_systoles(args.n, args.seed, cfg, segmenter)
    print(f"phantom seed {args.seed}, {args.n} subjects × 3 candidate beats ({time.perf_counter() - t0:.0f} s)")
    report(es, shown, cfg.n_frames, "read from the true masks with the instrument's end-systole rule")
    if es_seg is not None:
        report(es_seg, shown, cfg.n_frames, f"read by the segmenter {args.segmenter} (canonical cines)")
        print(f"segmenter vs true masks, same cine: mean |Δ| {circular_gap(es_seg, es, cfg.n_frames).mean():.3f} "
              "frames")


if __name__ == "__main__":
    main()
