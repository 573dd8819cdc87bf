"""Cine geometry: where to crop (mask box, or the motion map's box, or the centre) and resampling onto the
canonical grid (bilinear frames, nearest-neighbour labels, periodic in time).

Holds the canonical grid itself (``N_FRAMES`` × ``SIZE`` × ``SIZE``). Used by ``cmr.py``'s
canonicalisation (steps 1–3 of its docstring); split from it so that each module reads in one sitting.
Imports nothing from ``cmr.py`` (no cycle); ``cmr.py`` re-exports the constants.
"""

from __future__ import annotations

import numpy as np

from ecgflowcmr.canonical import N_FRAMES, SIZE

HEART_MARGIN_MM: float = 10.0
"""Margin kept around the heart's bounding box."""
PERCENTILES: tuple[float, float] = (1.0, 99.0)
"""Intensity range mapped to [-1, 1] (``cmr._normalize``); here it scales the motion map."""


def _crop_box(frames: np.ndarray, spacing: tuple[float, float], labels: np.ndarray | None,
              fov_mm: float | None) -> tuple[tuple[float, float, float, float], str]:
    """Square (in mm) crop (row0, col0, row1, col1) in source pixels, and the flag saying how it was chosen."""
    _, h, w = frames.shape
    heart = _bbox(labels.max(axis=0) > 0) if labels is not None else None
    how = "mask bounding box"
    if heart is None:
        heart = _motion_bbox(frames, spacing)
        how = ("fallback (mask is empty): " if labels is not None else "fallback: ") + (
            "temporal standard deviation map" if heart is not None else "image centre (no motion found)")
    if heart is None:
        centre = (h / 2.0, w / 2.0)
        extent_mm = 0.0
    else:
        (ra, ca, rb, cb) = heart
        centre = ((ra + rb) / 2.0, (ca + cb) / 2.0)
        extent_mm = max((rb - ra) * spacing[0], (cb - ca) * spacing[1]) + 2 * HEART_MARGIN_MM
    if fov_mm is None:
        side_mm = extent_mm if heart is not None else min(h * spacing[0], w * spacing[1])
        note = f"crop: {how}, tight ({side_mm:.0f} mm)"
    elif extent_mm > fov_mm:
        side_mm = extent_mm
        note = f"crop: {how}; enlarged to {side_mm:.0f} mm to hold the heart (default {fov_mm:g} mm)"
    else:
        side_mm = fov_mm
        note = f"crop: {how} ({side_mm:g} mm)"
    half_r, half_c = side_mm / spacing[0] / 2.0, side_mm / spacing[1] / 2.0
    box = (centre[0] - half_r, centre[1] - half_c, centre[0] + half_r, centre[1] + half_c)
    return tuple(float(v) for v in box), note  # type: ignore[return-value]


def _bbox(mask2d: np.ndarray) -> tuple[float, float, float, float] | None:
    """Edges (row0, col0, row1, col1) of the True pixels, or None."""
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return None
    return float(rows.min()), float(cols.min()), float(rows.max() + 1), float(cols.max() + 1)


def _motion_bbox(frames: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float, float, float] | None:
    """Bounding box of the strongly moving blobs (the beating heart), or None for a static cine.

    Per-pixel temporal standard deviation, smoothed (σ = 5 mm), times a broad centre prior, thresholded at
    0.2 × its maximum; the box holds every blob at least 0.2 × the largest. On phantom cines its centre
    lies within ~4 px of the mask's box centre.
    """
    from scipy import ndimage

    _, h, w = frames.shape
    lo, hi = np.percentile(frames[:, ::2, ::2], PERCENTILES)
    scale = float(hi - lo)
    if scale <= 0:
        return None
    std = frames.std(axis=0) / scale
    std = ndimage.gaussian_filter(std, sigma=(5.0 / spacing[0], 5.0 / spacing[1]))
    rr, cc = np.meshgrid((np.arange(h) - h / 2) / h, (np.arange(w) - w / 2) / w, indexing="ij")
    std *= np.exp(-(rr**2 + cc**2) / (2 * 0.35**2))  # mild centre prior: the heart is rarely at the edge
    peak = float(std.max())
    if peak < 1e-3:
        return None
    blobs, n = ndimage.label(std > 0.2 * peak)  # 0.2: the atria and the apex move less than the LV walls
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(std), blobs, index=np.arange(1, n + 1))
    return _bbox(np.isin(blobs, 1 + np.nonzero(sizes >= 0.2 * sizes.max())[0]))  # the main blobs together


def _interp_matrix(n_in: int, start: float, stop: float) -> np.ndarray:
    """(SIZE, n_in) linear-interpolation weights sampling pixel centres of [start, stop) edges; 0 outside."""
    step = (stop - start) / SIZE
    coords = start + (np.arange(SIZE) + 0.5) * step - 0.5
    lo = np.floor(coords).astype(int)
    frac = coords - lo
    weights = np.zeros((SIZE, n_in), dtype=np.float64)
    for idx, wgt in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = (idx >= 0) & (idx < n_in)
        weights[np.nonzero(ok)[0], idx[ok]] += wgt[ok]
    return weights


def _resample_bilinear(frames: np.ndarray, box: tuple[float, float, float, float], cval: float) -> np.ndarray:
    """(T, H, W) → (T, 96, 96) over ``box``; anti-aliased when shrinking; ``cval`` outside the image."""
    from scipy import ndimage

    _, h, w = frames.shape
    r0, c0, r1, c1 = box
    sr, sc = (r1 - r0) / SIZE, (c1 - c0) / SIZE
    x = frames.astype(np.float32) - np.float32(cval)  # outside the image weights are 0: it becomes cval again
    if sr > 1 or sc > 1:
        x = ndimage.gaussian_filter(x, sigma=(0.0, max(0.0, (sr - 1) / 2), max(0.0, (sc - 1) / 2)),
                                    mode="nearest")
    wr, wc = _interp_matrix(h, r0, r1).astype(np.float32), _interp_matrix(w, c0, c1).astype(np.float32)
    t = x.shape[0]
    x = (x.reshape(t * h, w) @ wc.T).reshape(t, h, SIZE)  # columns: one GEMM (T·H, W) @ (W, 96)
    x = (wr @ x.transpose(1, 0, 2).reshape(h, t * SIZE)).reshape(SIZE, t, SIZE).transpose(1, 0, 2)  # rows
    return (x + np.float32(cval)).astype(np.float32)  # 2-D GEMMs: 3× faster than a broadcast matmul here


def _resample_nearest(labels: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """(T, H, W) labels → (T, 96, 96) by nearest neighbour over ``box``; 0 outside the image."""
    _, h, w = labels.shape
    r0, c0, r1, c1 = box
    rows = np.floor(r0 + (np.arange(SIZE) + 0.5) * (r1 - r0) / SIZE).astype(int)
    cols = np.floor(c0 + (np.arange(SIZE) + 0.5) * (c1 - c0) / SIZE).astype(int)
    out = labels[:, np.clip(rows, 0, h - 1)][:, :, np.clip(cols, 0, w - 1)]
    out[:, (rows < 0) | (rows >= h)] = 0
    out[:, :, (cols < 0) | (cols >= w)] = 0
    return out


def _resample_time(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) over one cycle → (50, H, W): periodic linear interpolation (frame T ≡ frame 0)."""
    t = frames.shape[0]
    pos = np.arange(N_FRAMES) * t / N_FRAMES
    k0 = np.floor(pos).astype(int)
    wgt = (pos - k0).astype(np.float32)[:, None, None]
    return (1.0 - wgt) * frames[k0 % t] + wgt * frames[(k0 + 1) % t]
