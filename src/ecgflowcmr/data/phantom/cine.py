"""The phantom's four-chamber bSSFP cine and its label masks, painted from the heart's geometry.

Each structure is a signed-distance field over a window of pixels × 50 frames, painted with a soft edge
(the acquisition's blur) in anatomical order: epicardial fat and pericardium, atria, RV, LV myocardium,
LV blood pool, papillary muscle, AV valve leaflets; over a static background of chest wall with ribs,
lungs, liver and descending aorta. Then receive-coil shading, Rician noise and a gain → uint8. Bright
blood, dark myocardium, bright fat: a balanced SSFP look.
Masks: 0 background, 1 LV blood pool (papillary muscle included), 2 LV myocardium, 3 RV blood pool, 4 LA,
5 RA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgflowcmr.data.phantom.cohort import Physiology
from ecgflowcmr.data.phantom.config import PhantomConfig
from ecgflowcmr.data.phantom.ecg import ECGResult
from ecgflowcmr.data.phantom.heart import BETA, Geometry, filling_curve, heart_geometry


@dataclass
class Cine:
    frames: np.ndarray
    """(T, H, W) uint8, rows top→bottom, frame 0 at the R-peak (end-diastole)."""
    masks: np.ndarray
    """(T, H, W) uint8 labels 0..5."""
    spacing_mm: float
    frame_interval_s: float


_NOISE_BANK_SIZE = 1 << 22
_noise_bank: tuple[np.ndarray, np.ndarray] | None = None


def _noise_bank_arrays() -> tuple[np.ndarray, np.ndarray]:
    """A fixed bank of N(0, 1) float32 samples and their squares, made once per process.

    Drawing 2 × 819,200 fresh normals per cine costs more than the rendering; windows at random (seeded)
    offsets of one fixed bank are as good for image noise and keep the output deterministic.
    """
    global _noise_bank
    if _noise_bank is None:
        bank = np.random.default_rng(20170318).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
        _noise_bank = bank, bank * bank
    return _noise_bank


def _ellipse_distance(du: np.ndarray, dv: np.ndarray, ia: np.ndarray | float, ib: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an ellipse: (q² − 1) / |∇q²|, q² = (du·ia)² + (dv·ib)².

    ``du``, ``dv`` are offsets from the centre (fresh arrays: they are overwritten); ``ia``, ``ib`` inverse
    semi-axes, broadcastable. Exact on the boundary, first-order near it — all that edges and walls need.
    """
    x, y = du, dv
    x *= ia
    y *= ib
    grad = x * ia
    grad *= grad
    gy = y * ib
    gy *= gy
    grad += gy
    np.sqrt(grad, out=grad)
    grad *= 2.0
    grad += 1e-6
    x *= x
    y *= y
    x += y
    x -= 1.0
    x /= grad
    return x


def _segment_distance(u: np.ndarray, v: np.ndarray, au: np.ndarray, av: np.ndarray, bu: np.ndarray,
                      bv: np.ndarray, half_width: float) -> np.ndarray:
    """Signed distance (mm) to a thick segment from (au, av) to (bu, bv); per-frame endpoints (T,)."""
    f = _per_frame
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


def _per_frame(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)[:, None, None]


@dataclass
class Tissue:
    """Signal levels (relative to blood = 1) of one subject's acquisition: the per-subject contrast."""

    myo: float
    fat: float
    lung: float
    liver: float
    muscle: float
    pericardium: float


class _Canvas:
    """Frames and labels being painted, one rectangular window (in pixels) at a time."""

    def __init__(self, background: np.ndarray, n_t: int, edge_mm: float):
        self.frames = np.empty((n_t, *background.shape), dtype=np.float32)
        self.frames[:] = background
        self.labels = np.zeros(self.frames.shape, dtype=np.uint8)
        self.inv_edge = np.float32(1.0 / edge_mm)
        self.window = (slice(None), slice(None))

    def label(self, d: np.ndarray, label: int) -> None:
        """Set the labels of the window's region d < 0.

        As ``labels += inside · (label − labels)`` in uint8 (exact modulo 256): a masked copy with a
        scattered mask is ~30× slower.
        """
        view = self.labels[(slice(None), *self.window)]
        change = np.uint8(label) - view
        change *= (d < 0).view(np.uint8)
        view += change

    def paint(self, d: np.ndarray, value: float, label: int = 0) -> None:
        """Cover the region d < 0 of the window with ``value`` (soft edge); ``d`` is consumed."""
        view = self.frames[(slice(None), *self.window)]
        if label:
            self.label(d, label)
        d *= -self.inv_edge
        d += 0.5
        np.maximum(d, 0.0, out=d)
        np.minimum(d, 1.0, out=d)
        cover = np.float32(value) - view
        cover *= d
        view += cover


def render_cine(p: Physiology, ecg: ECGResult, cfg: PhantomConfig, rng: np.random.Generator,
                shape_seed: int) -> Cine:
    """The subject's cine (uint8) and label masks over the beat starting at ``ecg.cine_rpeak``.

    ``shape_seed`` seeds the heart's shape (``heart_geometry``); ``rng`` everything about the image.
    """
    n_t, size = cfg.n_frames, cfg.image_size
    spacing = float(rng.uniform(*cfg.pixel_spacing_mm))
    dt = ecg.cine_rr_s / n_t
    g, opening = filling_curve(np.arange(n_t) * dt, ecg, p)
    geo = heart_geometry(p, g, np.random.default_rng(shape_seed))
    tissue = Tissue(
        myo=rng.uniform(0.2, 0.32), fat=rng.uniform(0.7, 0.92), lung=rng.uniform(0.04, 0.09),
        liver=rng.uniform(0.30, 0.42), muscle=rng.uniform(0.24, 0.34), pericardium=rng.uniform(0.06, 0.14),
    )
    edge = float(rng.uniform(*cfg.edge_blur_px)) * spacing
    f = _per_frame

    # Placement: heart frame (u, v) → image (x right, y down, mm from the centre), apex up, tilted.
    theta = np.deg2rad(p.tilt_deg)
    e_u = np.array([np.sin(theta), -np.cos(theta)])
    e_v = np.array([np.cos(theta), np.sin(theta)])
    apex_epi = float(geo.uv[0] + (1 + BETA) * geo.a[0] + geo.t_apex[0])
    v_septum = -(geo.r_sep + geo.t_sep)
    v_rv_wall = float((v_septum - geo.rv_w).min())
    v_lat_wall = float((geo.r_lat + geo.t_lat).max())
    # The crux: the atrial septum continues the ventricular septum; LA right of it, RA left of it.
    v_crux = -float(geo.r_sep[0] + 0.5 * geo.t_sep[0])
    la_v = v_crux + 0.92 * float(geo.la_b.max())
    ra_v = v_crux - 0.92 * float(geo.ra_b.max())
    atria_low = -float(max(2 * geo.la_a.max(), 2 * geo.ra_a.max()))
    centre_uv = np.array([0.5 * (atria_low + apex_epi), 0.5 * (v_rv_wall + v_lat_wall)])
    shift = rng.uniform(-cfg.position_mm, cfg.position_mm, size=2)
    origin = shift - (centre_uv[0] * e_u + centre_uv[1] * e_v)
    coords = (np.arange(size, dtype=np.float32) - np.float32((size - 1) / 2)) * np.float32(spacing)
    xx, yy = np.meshgrid(coords, coords)  # (H, W): x = column, y = row (down)
    u_img = ((xx - origin[0]) * e_u[0] + (yy - origin[1]) * e_u[1]).astype(np.float32)
    v_img = ((xx - origin[0]) * e_v[0] + (yy - origin[1]) * e_v[1]).astype(np.float32)

    canvas = _Canvas(_background(u_img, v_img, geo, tissue, edge, rng, apex_epi, v_rv_wall), n_t, edge)

    def window(u_lo: float, u_hi: float, v_lo: float, v_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """Set the canvas window to the pixels covering the (u, v) rectangle; return its (1, h, w) u and v."""
        inside = (u_img >= u_lo) & (u_img <= u_hi) & (v_img >= v_lo) & (v_img <= v_hi)
        rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
        canvas.window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return u_img[None, *canvas.window], v_img[None, *canvas.window]

    def crop(outer: tuple[slice, slice], inner: tuple[slice, slice]) -> tuple[slice, ...]:
        """Index of window ``inner`` inside (T, h, w) fields computed over window ``outer``."""
        return (slice(None), *(slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner)))

    # Ventricles: LV cavity and epicardium (septal/lateral halves), RV crescent, epicardial fat.
    fat_lv, fat_rv = float(rng.uniform(1.0, 3.0)), float(rng.uniform(2.5, 6.0))
    rv_lean_deg = float(rng.uniform(10, 22))
    t_rvw = float(rng.uniform(2.5, 3.5))
    u, v = window(-14.0, apex_epi + fat_rv + 4, v_rv_wall - t_rvw - fat_rv - 4, v_lat_wall + fat_lv + 4)
    ventricles = canvas.window
    groove = (5.0 * np.exp(-(((u - 4.0) / 12.0) ** 2)) + 2.5 * np.exp(-(((u - apex_epi) / 15.0) ** 2))).astype(
        np.float32)
    below_mv = f(geo.uv) - u  # > 0 below the mitral plane
    below_tv = f(geo.utv) - u
    centre_lv = f(geo.uv + BETA * geo.a)
    left = v < 0
    d_epi_full = _ellipse_distance(u - centre_lv, np.broadcast_to(v, below_mv.shape).copy(),
                                   f(1 / (geo.a + geo.t_apex)),
                                   np.where(left, f(1 / (geo.r_sep + geo.t_sep)), f(1 / (geo.r_lat + geo.t_lat))))
    # RV: an ellipse cut at its equator by the tricuspid plane, its long axis leaning towards the LV apex.
    lean = np.deg2rad(rv_lean_deg)
    cos_l, sin_l = np.float32(np.cos(lean)), np.float32(np.sin(lean))
    rv_u0, rv_v0 = geo.utv, v_septum - 0.3 * geo.rv_w
    d_rv_full = _ellipse_distance(cos_l * u + sin_l * v - f(cos_l * rv_u0 + sin_l * rv_v0),
                                  cos_l * v - sin_l * u - f(cos_l * rv_v0 - sin_l * rv_u0),
                                  f(1 / geo.rv_len), f(1 / (0.7 * geo.rv_w)))
    d_fat = np.minimum(d_epi_full - fat_lv, d_rv_full - (t_rvw + fat_rv))
    d_fat -= groove
    d_fat = np.maximum(d_fat, below_mv - 12.0)
    canvas.paint(d_fat - 1.5, tissue.pericardium)
    canvas.paint(d_fat, tissue.fat)

    # Atria (painted before the ventricles, whose basal myocardium overlaps their roofs).
    la_lo, ra_lo = geo.uv - 2 * geo.la_a, geo.utv - 2 * geo.ra_a
    u_a, v_a = window(float(min(la_lo.min(), ra_lo.min())) - 6, float(geo.utv.max()) + 4,
                      ra_v - float(geo.ra_b.max()) - 6, la_v + float(geo.la_b.max()) + 6)
    below_mv_a, below_tv_a = f(geo.uv) - u_a, f(geo.utv) - u_a
    d_ra = np.maximum(_ellipse_distance(u_a - f(geo.utv - 0.5 * geo.ra_a), np.broadcast_to(
        v_a - np.float32(ra_v), below_tv_a.shape).copy(), f(1 / geo.ra_a), f(1 / geo.ra_b)), -below_tv_a)
    d_la = np.maximum(_ellipse_distance(u_a - f(geo.uv - 0.5 * geo.la_a), np.broadcast_to(
        v_a - np.float32(la_v), below_mv_a.shape).copy(), f(1 / geo.la_a), f(1 / geo.la_b)), -below_mv_a)
    wall = float(rng.uniform(1.0, 1.8))
    canvas.paint(d_ra - wall, tissue.myo)
    canvas.paint(d_ra, 0.97, label=5)
    canvas.paint(d_la - wall, tissue.myo)
    canvas.paint(d_la, 0.97, label=4)

    # RV then LV, each in its own part of the ventricles' window (the LV covers the RV's right part).
    window(float(geo.utv.min()) - 4, apex_epi, v_rv_wall - t_rvw - 2, 0.0)
    rv = crop(ventricles, canvas.window)
    canvas.paint(np.maximum(d_rv_full[rv] - t_rvw, below_tv[rv] - 3.0), tissue.myo)
    canvas.label(np.maximum(d_rv_full[rv], below_tv[rv]), 3)
    canvas.paint(np.maximum(d_rv_full[rv], below_tv[rv] - 2.5), 1.0)
    # Moderator band: a muscular bar across the RV from the septum to the free wall, towards its apex.
    along = rng.uniform(0.6, 0.75)
    wall_u = rv_u0 + cos_l * along * geo.rv_len + sin_l * 0.6 * geo.rv_w
    wall_v = rv_v0 + sin_l * along * geo.rv_len - cos_l * 0.6 * geo.rv_w
    band_u = wall_u + rng.uniform(4.0, 10.0)
    height = np.clip((band_u - geo.uv - BETA * geo.a) / (geo.a + geo.t_apex), -1.0, 1.0)
    band_v = v_septum * np.sqrt(1 - height**2) + 1.0
    u_rv, v_rv = u_img[None, *canvas.window], v_img[None, *canvas.window]
    canvas.paint(_segment_distance(u_rv, v_rv, band_u, band_v, wall_u, wall_v, rng.uniform(0.7, 1.1)), tissue.myo)
    u, v = window(-6.0, apex_epi + 2, float(v_septum.min()) - 2, v_lat_wall + 2)
    lv = crop(ventricles, canvas.window)
    below_mv = below_mv[lv]
    canvas.paint(np.maximum(d_epi_full[lv], below_mv - 2.0), tissue.myo, label=2)
    d_cav = _ellipse_distance(u - centre_lv, np.broadcast_to(v, below_mv.shape).copy(), f(1 / geo.a),
                              np.where(v < 0, f(1 / geo.r_sep), f(1 / geo.r_lat)))
    canvas.label(np.maximum(d_cav, below_mv), 1)
    canvas.paint(np.maximum(d_cav, below_mv - 2.5), 1.0)

    # Anterolateral papillary muscle: a dark oval on the lateral wall, shortening and thickening in systole
    # (labelled blood pool, as in the UK Biobank contours).
    pm_u = geo.uv + (1 + BETA) * geo.a * rng.uniform(0.4, 0.55)
    pm_len = rng.uniform(8.0, 11.0) * np.sqrt(geo.a / geo.a[0])
    pm_w = rng.uniform(3.5, 5.0) * np.sqrt(geo.a[0] / geo.a)
    pm_v = geo.r_lat * np.sqrt(np.maximum(1 - ((pm_u - geo.uv - BETA * geo.a) / geo.a) ** 2, 0.1)) - 0.8 * pm_w
    u, v = window(float(pm_u.min()) - 10, float(pm_u.max()) + 10, float((pm_v - pm_w).min()) - 3,
                  float((pm_v + pm_w).max()) + 3)
    canvas.paint(_ellipse_distance(u - f(pm_u), v - f(pm_v), f(1 / pm_len), f(1 / pm_w)), tissue.myo * 1.1)

    # Valve leaflets: hinged at the annuli, meeting in systole, swinging into the ventricles in diastole.
    base = np.sqrt(1 - BETA**2)
    mv = (geo.uv, -geo.r_sep * base, geo.r_lat * base)
    tv_sep = -(geo.r_sep * base + geo.t_sep)
    tv = (geo.utv, tv_sep, tv_sep - 0.85 * geo.rv_w)
    for plane, hinge_a, hinge_b in (mv, tv):
        span = np.abs(hinge_b - hinge_a)
        u, v = window(float(plane.min()) - 5, float((plane + 0.6 * span).max()) + 3,
                      float(np.minimum(hinge_a, hinge_b).min()) - 3, float(np.maximum(hinge_a, hinge_b).max()) + 3)
        meet = hinge_a + 0.55 * (hinge_b - hinge_a)
        leaflets = None
        for hinge, length in ((hinge_a, 0.62), (hinge_b, 0.5)):
            closed = (plane - 2.5, meet)
            open_ = (plane + 0.9 * length * span, hinge + 0.25 * (meet - hinge))
            tip_u = closed[0] + opening * (open_[0] - closed[0])
            tip_v = closed[1] + opening * (open_[1] - closed[1])
            d = _segment_distance(u, v, plane, hinge, tip_u, tip_v, 0.8)
            leaflets = d if leaflets is None else np.minimum(leaflets, d, out=leaflets)
        canvas.paint(leaflets, 0.6 * tissue.myo)

    frames = _acquire(canvas.frames, xx, yy, cfg, rng)
    return Cine(frames=frames, masks=canvas.labels, spacing_mm=spacing, frame_interval_s=dt)


def _background(u: np.ndarray, v: np.ndarray, geo: Geometry, tissue: Tissue, edge: float,
                rng: np.random.Generator, apex_epi: float, v_rv_wall: float) -> np.ndarray:
    """Static (H, W) anatomy around the heart: chest wall, lungs with vessels, liver, descending aorta."""
    inv = np.float32(1.0 / edge)

    def over(img: np.ndarray, d: np.ndarray, value: float) -> None:
        img += np.clip(0.5 - d * inv, 0.0, 1.0) * (np.float32(value) - img)

    def ellipse(cu: float, cv: float, au: float, bv: float) -> np.ndarray:
        return _ellipse_distance(u - np.float32(cu), v - np.float32(cv), np.float32(1 / au), np.float32(1 / bv))

    img = np.zeros(u.shape, dtype=np.float32)
    # Thorax: the apex touches the anterior chest wall (skin, subcutaneous fat, muscle), lungs inside.
    muscle, sc_fat = rng.uniform(9, 15), rng.uniform(6, 20)
    top = apex_epi + rng.uniform(4, 10) + muscle + sc_fat
    body = ellipse(top - 260, rng.uniform(-40, 0), 260, 420)
    over(img, body, tissue.fat)
    over(img, body + sc_fat, tissue.muscle)
    over(img, body + sc_fat + muscle, tissue.lung)
    # Ribs in the chest wall: oblique sections, dark cortex around fatty marrow.
    body_cv = float(np.mean(v[body < 0])) if np.any(body < 0) else 0.0
    for rib_v in rng.uniform(-90, 90) + np.cumsum(rng.uniform(45, 75, size=4)) - 150:
        ratio = np.clip((rib_v - body_cv) / (420 - sc_fat - muscle), -0.95, 0.95)
        rib_u = top - 260 + (260 - sc_fat - muscle + 1) * np.sqrt(1 - ratio**2)
        rib = ellipse(rib_u, rib_v, rng.uniform(5, 7), rng.uniform(9, 14))
        over(img, rib, 0.08)
        over(img, rib + 1.8, 0.7 * tissue.fat)
    # Lung texture: smooth low-frequency variation and a few vessels.
    for _ in range(6):
        cu, cv = rng.uniform(-90, apex_epi), rng.uniform(-140, 120)
        r = rng.uniform(1.5, 3.5)
        vessel = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * r * r))
        img += (vessel * rng.uniform(0.15, 0.4) * (img < tissue.lung + 0.05)).astype(np.float32)
    # Liver beyond the diaphragm, lateral to the right heart (the image's left), towards the apex level.
    liver_u, liver_v = apex_epi * rng.uniform(0.1, 0.5), v_rv_wall - rng.uniform(25, 45) - 110
    over(img, ellipse(liver_u, liver_v, 150, 110) - 4, tissue.pericardium)
    over(img, ellipse(liver_u, liver_v, 150, 110), tissue.liver)
    # Descending aorta, behind the left atrium.
    low = -1.5 * float(geo.la_a.max())
    over(img, ellipse(low - 9, rng.uniform(0, 25), 11, 11), rng.uniform(0.75, 0.95))
    return img


def _acquire(frames: np.ndarray, xx: np.ndarray, yy: np.ndarray, cfg: PhantomConfig,
             rng: np.random.Generator) -> np.ndarray:
    """Receive-coil shading, Rician noise (magnitude of a complex Gaussian), gain → uint8. ``frames`` is consumed."""
    # Anterior surface coil: brighter towards the chest wall (image top), plus smooth inhomogeneity.
    direction = -np.pi / 2 + rng.uniform(-0.8, 0.8)
    span = float(xx.max() - xx.min())
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / span
    shading = 1.0 + rng.uniform(0.2, 0.5) * ramp
    for _ in range(4):
        cx, cy, r = rng.uniform(-0.4, 0.4) * span, rng.uniform(-0.4, 0.4) * span, rng.uniform(0.15, 0.3) * span
        shading *= 1.0 + rng.uniform(-0.12, 0.12) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    sigma = float(rng.uniform(*cfg.noise))
    gain = float(rng.uniform(170, 220))
    shading = (shading * gain).astype(np.float32)
    bank, bank_sq = _noise_bank_arrays()
    n = frames.size
    o1, o2 = (int(o) for o in rng.integers(0, bank.size - n, size=2))
    # |S + σ(n1 + i·n2)| with S, σ already multiplied by the gain.
    frames *= shading
    real = bank[o1:o1 + n].reshape(frames.shape) * np.float32(sigma * gain)
    real += frames
    real *= real
    real += bank_sq[o2:o2 + n].reshape(frames.shape) * np.float32((sigma * gain) ** 2)
    np.sqrt(real, out=real)
    np.minimum(real, 255.0, out=real)
    return real.astype(np.uint8)
