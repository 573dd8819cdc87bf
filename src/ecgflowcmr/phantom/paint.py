"""Painting primitives of the phantom's cine: signed-distance fields (ellipses, thick segments), the image
grid in the heart's frame, and a canvas that covers regions with a soft edge, one pixel window at a time.

Distances are in mm, negative inside; fields are float32 (T, h, w) over a window of pixels × frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def ellipse_distance(du: np.ndarray, dv: np.ndarray, ia: np.ndarray | float, ib: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an ellipse: (q² − 1) / |∇q²|, q² = (du·ia)² + (dv·ib)².

    ``du``, ``dv`` are offsets from the centre, ``ia``, ``ib`` inverse semi-axes, all broadcastable (float32).
    Exact on the boundary, first-order near it — all that edges and walls need.
    """
    x2 = du * ia
    x2 *= x2  # (du·ia)²
    y2 = dv * ib
    y2 *= y2
    grad = x2 * (4 * ia * ia)  # |∇q²|² = 4 (du·ia²)² + 4 (dv·ib²)²
    grad += y2 * (4 * ib * ib)
    np.sqrt(grad, out=grad)
    grad += 1e-6
    x2 += y2
    x2 -= 1.0
    x2 /= grad
    return x2


def by_side(left: np.ndarray, on_left: np.ndarray, on_right: np.ndarray) -> np.ndarray:
    """(T, h, w): the per-frame value ``on_left`` (T,) where ``left`` (1, h, w) is True, else ``on_right``.

    As arithmetic on a 0/1 mask: ``np.where`` with broadcast operands is ~20× slower.
    """
    return left.astype(np.float32) * per_frame(on_left - on_right) + per_frame(on_right)


def segment_distance(u: np.ndarray, v: np.ndarray, au: np.ndarray, av: np.ndarray, bu: np.ndarray,
                      bv: np.ndarray, half_width: float) -> np.ndarray:
    """Signed distance (mm) to a thick segment from (au, av) to (bu, bv); per-frame endpoints (T,)."""
    f = per_frame
    au, av, du, dv = f(au), f(av), f(bu - au), f(bv - av)
    pu, pv = u - au, v - av
    t = pu * du
    t += pv * dv
    t *= 1.0 / (du * du + dv * dv + 1e-6)
    np.clip(t, 0.0, 1.0, out=t)
    pu -= t * du
    pv -= t * dv
    pu *= pu
    pv *= pv
    pu += pv
    np.sqrt(pu, out=pu)
    pu -= half_width
    return pu


def per_frame(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)[:, None, None]


@dataclass
class Grid:
    """The image's pixel centres in the heart frame: ``u``, ``v`` (H, W) float32 mm, an affine map of (x, y)."""

    u: np.ndarray
    v: np.ndarray
    origin: np.ndarray
    """Image (x, y) mm of the heart frame's origin; x right, y down, from the image centre."""
    axes: np.ndarray
    """(2, 2) rows e_u, e_v: the heart frame's unit vectors in image (x, y)."""
    spacing: float

    def box(self, u_lo: float, u_hi: float, v_lo: float, v_hi: float) -> tuple[slice, slice]:
        """(rows, columns) of the pixels boxing the (u, v) rectangle, clipped to the image."""
        (ux, uy), (vx, vy) = self.axes.tolist()  # plain floats: this runs ~20 times per cine, on 4 points
        x0, y0 = self.origin.tolist()
        half, size = (self.u.shape[0] - 1) / 2, self.u.shape[0]
        xs = [x0 + uc * ux + vc * vx for uc in (u_lo, u_hi) for vc in (v_lo, v_hi)]
        ys = [y0 + uc * uy + vc * vy for uc in (u_lo, u_hi) for vc in (v_lo, v_hi)]

        def span(lo: float, hi: float) -> slice:
            first = min(max(math.ceil(lo / self.spacing + half), 0), size - 1)
            last = min(max(math.floor(hi / self.spacing + half), 0), size - 1)
            return slice(first, last + 1)

        return span(min(ys), max(ys)), span(min(xs), max(xs))


class Canvas:
    """Frames and labels being painted, one rectangular window (in pixels) at a time.

    The window's pixels are copied out into contiguous arrays while it is painted and copied back when the
    window changes (``set_window``, ``finish``): element-wise passes over a (T, h, w) view of the (T, H, W)
    canvas run a short inner loop per row and cost ~4× those over a contiguous copy.
    """

    def __init__(self, background: np.ndarray, n_t: int, edge_mm: float):
        self.frames = np.empty((n_t, *background.shape), dtype=np.float32)
        self.frames[:] = background
        self.labels = np.zeros(self.frames.shape, dtype=np.uint8)
        self.inv_edge = np.float32(1.0 / edge_mm)
        self.window = (slice(None), slice(None))
        self._frames_view: np.ndarray | None = None
        self._labels_view: np.ndarray | None = None

    def set_window(self, window: tuple[slice, slice]) -> None:
        self._flush()
        self.window = window

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The painted (T, H, W) frames (float32) and labels (uint8)."""
        self._flush()
        return self.frames, self.labels

    def _flush(self) -> None:
        index = (slice(None), *self.window)
        if self._frames_view is not None:
            self.frames[index] = self._frames_view
        if self._labels_view is not None:
            self.labels[index] = self._labels_view
        self._frames_view = self._labels_view = None

    def label(self, d: np.ndarray, label: int) -> None:
        """Set the labels of the window's region d < 0.

        As ``labels += inside · (label − labels)`` in uint8 (exact modulo 256): a masked copy with a
        scattered mask is ~30× slower.
        """
        if self._labels_view is None:
            self._labels_view = self.labels[(slice(None), *self.window)].copy()
        view = self._labels_view
        change = np.uint8(label) - view
        change *= (d < 0).view(np.uint8)
        view += change

    def paint(self, d: np.ndarray, value: float, label: int = 0) -> None:
        """Cover the region d < 0 of the window with ``value`` (soft edge); ``d`` is consumed."""
        if self._frames_view is None:
            self._frames_view = self.frames[(slice(None), *self.window)].copy()
        view = self._frames_view
        if label:
            self.label(d, label)
        # view ← value + (view − value)·(1 − w), w = clip(½ − d/edge, 0, 1) the cover: in place, no temporary.
        d *= self.inv_edge
        d += 0.5
        np.clip(d, 0.0, 1.0, out=d)  # 1 − w; np.maximum/np.minimum with a scalar are ~5× slower than clip
        value = np.float32(value)
        view -= value
        view *= d
        view += value
