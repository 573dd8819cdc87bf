"""Table 1's image and video quality metrics for every source of test cines, each beside a real-vs-real floor.

Sources are sets of cines (N, 50, 96, 96) in [0, 1] aligned with the real test cines (item i = subject i):
the generated cines and the baselines. For each source:

- ``lpips``: LPIPS-Alex per frame, paired with the subject's own real frame, mean over frames and subjects;
- ``fid_inception``: Fréchet distance of 2015-12-05 Inception pool features of ``fid_frames`` evenly spaced
  frames per cine (frame 0 = ED first) of the source vs the same frames of the real test cines;
- ``fvd_i3d``: Fréchet distance of Inception-I3D features (Kinetics-400 logits averaged over time) of the
  whole 50-frame cines at 224² vs the real test cines' (never computed with another network);
- ``psnr_db`` / ``ssim``: per cine against the subject's own real cine (``image_metrics``), mean;
- ``temporal_change``: mean |x_{t+1} − x_t| over pixels and the cycle (circular), as a ratio to the real
  cines' (1 = moves as much as the real hearts; a frozen cine scores 0, flicker scores > 1);
- ``temporal_jerk``: mean |x_{t+1} − 2x_t + x_{t−1}| / mean |x_{t+1} − x_t| of the source (smooth motion is
  low; frame-to-frame flicker is high), beside the real cines' value.

The floor (``real_floor``) is the same computation with real *training* cines in place of the source, item i
of the train split paired with test subject i: what two different real hearts score against each other.
A source (or the floor) may hold fewer cines than the real test set (``evaluate --max-baseline``): its M cines
pair with the first M test subjects and are compared with those subjects' real cines; every definition
states its N.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ecgflowcmr.evaluation.feature_networks import (
    I3D,
    I3D_SIZE,
    LPIPS,
    InceptionFeatures,
    i3d_features,
    lpips_distances,
)
from ecgflowcmr.evaluation.frechet import frechet_between


def fid_frame_indices(frames: int, per_cine: int) -> np.ndarray:
    """``per_cine`` evenly spaced frame indices over the cycle, starting at frame 0 (ED)."""
    if not 1 <= per_cine <= frames:
        raise ValueError(f"fid frames per cine must be in 1..{frames}, got {per_cine}")
    return (np.arange(per_cine) * frames // per_cine).astype(int)


CHUNK = 1
"""Cines per chunk of the whole-set means below: their temporaries (float64 PSNR, SSIM maps, rolled copies)
stay at a chunk's size instead of the set's (1,000 test cines of 50 × 96² made ~20 GB of them). One cine's
(1.8–3.7 MB each) stay in the cache: per cine, PSNR took 0.34 ms instead of 6.0 with 32 at once, SSIM 9.1
instead of 30, the temporal measures and sharpness 2–3× less; every per-cine value is the same bit for bit."""


def chunk_mean(fn: Any, *arrays: np.ndarray) -> float:
    """Mean over items of the per-item values ``fn(*chunks)`` → (items,), computed ``CHUNK`` items at a time
    (``fn`` reduces each item on its own, so the chunk size changes no value)."""
    n = len(arrays[0])
    values = [np.asarray(fn(*(a[i:i + CHUNK] for a in arrays)), dtype=np.float64) for i in range(0, n, CHUNK)]
    return float(np.concatenate(values).mean())


def _abs_change(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.abs(np.roll(x, -1, axis=1) - x).reshape(len(x), -1).mean(1)  # (items,)


def _abs_second_difference(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.abs(np.roll(x, -1, axis=1) - 2 * x + np.roll(x, 1, axis=1)).reshape(len(x), -1).mean(1)  # (items,)


def temporal_change(cines01: np.ndarray) -> float:
    """Mean |x_{t+1} − x_t| over pixels, frames (circular: the last frame neighbours the first) and cines."""
    return chunk_mean(_abs_change, cines01)


def temporal_jerk(cines01: np.ndarray, change: float | None = None) -> float:
    """Mean |x_{t+1} − 2x_t + x_{t−1}| over mean |x_{t+1} − x_t| (circular): 0 for uniform motion. ``change``:
    ``temporal_change(cines01)`` when the caller has it already."""
    first = temporal_change(cines01) if change is None else change
    return chunk_mean(_abs_second_difference, cines01) / first if first > 0 else 0.0


def _paired(real: np.ndarray, other: np.ndarray) -> dict[str, float]:
    from ecgflowcmr.models.image_metrics import psnr, ssim

    def tensors(fn: Any) -> Any:
        return lambda r, o: fn(torch.from_numpy(np.asarray(o, dtype=np.float32)),
                               torch.from_numpy(np.asarray(r, dtype=np.float32))).double().numpy()

    return {"psnr_db": chunk_mean(tensors(psnr), real, other), "ssim": chunk_mean(tensors(ssim), real, other)}


def quality_metrics(real_test: np.ndarray, sources: dict[str, np.ndarray], real_train: np.ndarray, *,
                    lpips: LPIPS | None, lpips_info: dict[str, Any] | str,
                    inception: InceptionFeatures | None, inception_info: dict[str, Any] | str,
                    i3d: I3D | None = None, i3d_info: dict[str, Any] | str = "not requested",
                    fid_frames: int = 5, i3d_size: int = I3D_SIZE, floor_items: int | None = None
                    ) -> dict[str, Any]:
    """Per source (and ``real_floor``), each metric as ``{"value", "definition"}`` or ``{"unavailable"}``. A set
    may be an array or lazily read rows (``sharding.StoreRows``): the pixel measures read one cine at a time.

    ``real_train`` must hold at least ``floor_items`` cines (default: as many as ``real_test``; the first
    ``floor_items`` pair with the first test items); a source of M ≤ N cines pairs with the first M test
    items; ``lpips_info`` / ``inception_info``: the network's description, or the reason it is unavailable.
    """
    n, t = real_test.shape[:2]
    floor_items = n if floor_items is None else floor_items
    if not 1 <= floor_items <= n or len(real_train) < floor_items:
        raise ValueError(f"the floor needs {floor_items} (≤ {n}) real training cines, got {len(real_train)}")
    everything = {**sources, "real_floor": real_train[:floor_items]}
    if lpips is not None or inception is not None:  # they take whole sets of frames: read lazy sets whole
        real_test = np.asarray(real_test)
        everything = {k: np.asarray(v) for k, v in everything.items()}
    idx = fid_frame_indices(t, fid_frames)
    size = f"{real_test.shape[2]}×{real_test.shape[3]}"
    timings: dict[str, float] = {}

    start = time.perf_counter()
    real_inception = inception(real_test[:, idx].reshape(-1, *real_test.shape[2:])) if inception else None
    timings["inception_real_s"] = time.perf_counter() - start
    start = time.perf_counter()
    real_i3d = i3d_features(i3d, real_test, i3d_size) if i3d else None
    timings["i3d_real_s"] = time.perf_counter() - start
    real_changes = {n: temporal_change(real_test)}  # by the number of test subjects a source pairs with
    real_jerk = temporal_jerk(real_test, real_changes[n])
    out: dict[str, Any] = {}
    for name, cines in everything.items():
        k = len(cines)
        if cines.shape[1:] != real_test.shape[1:] or not 1 <= k <= n:
            raise ValueError(f"source {name!r} has shape {cines.shape}, the real test cines {real_test.shape}")
        real = real_test[:k]  # the same subjects' real cines
        of = f"{k} subjects" if k == n else f"the first {k} of the {n} test subjects (--max-baseline)"
        if k not in real_changes:
            real_changes[k] = temporal_change(real)
        real_change = real_changes[k]
        m: dict[str, Any] = {}
        start = time.perf_counter()
        if lpips is not None:
            d = lpips_distances(lpips, cines.reshape(-1, *cines.shape[2:]), real.reshape(-1, *cines.shape[2:]))
            m["lpips"] = {"value": float(d.mean()),
                          "definition": f"LPIPS-Alex v0.1 per frame against the subject's own real frame, all {t} "
                                        f"frames at {size}, grey → RGB, mean over {of} × {t} frames; "
                                        f"{lpips_info}"}
        else:
            m["lpips"] = {"unavailable": str(lpips_info)}
        timings[f"lpips_{name}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if inception is not None:
            feats = inception(cines[:, idx].reshape(-1, *cines.shape[2:]))
            m["fid_inception"] = {
                "value": frechet_between(feats, real_inception[:k * len(idx)]),
                "definition": f"FID: Fréchet distance of Inception pool features, frames {idx.tolist()} of each of "
                              f"{k} cines ({k * len(idx)} frames, {size} → 299²) vs the same frames of the real "
                              f"cines of the same subjects ({of}); small N biases FID upwards: compare with real_floor "
                              f"at the same N; {inception_info}"}
        else:
            m["fid_inception"] = {"unavailable": str(inception_info)}
        timings[f"inception_{name}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if i3d is not None:
            m["fvd_i3d"] = {
                "value": frechet_between(i3d_features(i3d, cines, i3d_size), real_i3d[:k]),
                "definition": f"FVD: Fréchet distance of I3D features of the {k} whole cines ({t} frames, {size} → "
                              f"{i3d_size}²) vs the real cines of the same subjects ({of}); N below the 400 feature "
                              f"dimensions biases it upwards: compare with real_floor; {i3d_info}"}
        else:
            m["fvd_i3d"] = {"unavailable": str(i3d_info)}
        timings[f"i3d_{name}_s"] = time.perf_counter() - start
        paired = _paired(real, cines)
        m["psnr_db"] = {"value": paired["psnr_db"], "definition": f"PSNR against the subject's own real cine, "
                        f"all voxels of the 50×{size} cine in [0, 1], mean over {of} (dB)"}
        m["ssim"] = {"value": paired["ssim"], "definition": f"SSIM (11×11 Gaussian, σ 1.5) per frame against "
                     f"the subject's own real frame, mean over frames and {of}"}
        change = temporal_change(cines)
        m["temporal_change_ratio"] = {
            "value": change / real_change if real_change > 0 else None,
            "definition": f"mean |x_(t+1) − x_t| (circular over the cycle) over that of the same subjects' real "
                          f"cines ({real_change:.4f}; {of}): 1 = moves as much as the real hearts, 0 = frozen"}
        m["temporal_jerk"] = {
            "value": temporal_jerk(cines, change),
            "definition": f"mean |x_(t+1) − 2x_t + x_(t−1)| / mean |x_(t+1) − x_t| over {of} (all real test "
                          f"cines: {real_jerk:.3f}); higher = frame-to-frame flicker"}
        out[name] = m
    out["timings_s"] = timings
    return out
