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

from ecgflowcmr.phantom.cohort import Physiology
from ecgflowcmr.phantom.config import PhantomConfig
from ecgflowcmr.phantom.ecg import ECGResult
from ecgflowcmr.phantom.heart import BETA, Geometry, filling_curve, heart_geometry
from ecgflowcmr.phantom.paint import (
    Canvas,
    Grid,
    by_side,
    ellipse_distance,
    per_frame,
    segment_distance,
)


@dataclass
class Cine:
    frames: np.ndarray
    """(T, H, W) uint8, rows top→bottom, frame 0 at the R-peak (end-diastole)."""
    masks: np.ndarray
    """(T, H, W) uint8 labels 0..5."""
    spacing_mm: float
    frame_interval_s: float


_NOISE_BANK_SIZE = 1 << 22
_ACQUIRE_CHUNK = 1 << 16
"""Pixels per step of ``_acquire`` (~256 kB of float32 per buffer): its passes stay in cache."""
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


@dataclass
class Tissue:
    """Signal levels (relative to blood = 1) of one subject's acquisition: the per-subject contrast."""

    myo: float
    fat: float
    lung: float
    liver: float
    muscle: float
    pericardium: float


def render_cine(p: Physiology, ecg: ECGResult, cfg: PhantomConfig, rng: np.random.Generator,
                shape_seed: int) -> Cine:
    """The subject's cine (uint8) and label masks over the beat starting at ``ecg.cine_rpeak``.

    ``shape_seed`` seeds the heart's shape (``heart_geometry``); ``rng`` everything about the image, drawn
    in a fixed order (placement, background, then each structure as it is painted).
    """
    n_t = cfg.n_frames
    spacing = float(rng.uniform(*cfg.pixel_spacing_mm))
    dt = ecg.cine_rr_s / n_t
    g, opening = filling_curve(np.arange(n_t) * dt, ecg, p)
    geo = heart_geometry(p, g, np.random.default_rng(shape_seed))
    tissue = Tissue(
        myo=rng.uniform(0.2, 0.32), fat=rng.uniform(0.7, 0.92), lung=rng.uniform(0.04, 0.09),
        liver=rng.uniform(0.30, 0.42), muscle=rng.uniform(0.24, 0.34), pericardium=rng.uniform(0.06, 0.14),
    )
    edge = float(rng.uniform(*cfg.edge_blur_px)) * spacing
    scene = _place(p, geo, tissue, cfg, spacing, edge, rng)
    ventricles = _paint_fat(scene, rng)
    _paint_atria(scene, rng)
    _paint_rv(scene, ventricles, rng)
    _paint_lv(scene, ventricles)
    _paint_papillary_muscle(scene, rng)
    _paint_valves(scene, opening)
    frames, labels = scene.canvas.finish()
    return Cine(frames=_acquire(frames, scene.xx, scene.yy, cfg, rng), masks=labels, spacing_mm=spacing,
                frame_interval_s=dt)


@dataclass
class _Scene:
    """One subject's heart placed on the image: what the painting steps of :func:`render_cine` share.

    Heart frame (u, v) in mm: u along the long axis towards the apex, v across (septum at v < 0).
    """

    geo: Geometry
    tissue: Tissue
    grid: Grid
    canvas: Canvas
    xx: np.ndarray
    yy: np.ndarray
    """(H, W) image x (column) and y (row, down) in mm from the image centre."""
    apex_epi: float
    v_septum: np.ndarray
    v_rv_wall: float
    v_lat_wall: float
    la_v: float
    ra_v: float

    def window(self, u_lo: float, u_hi: float, v_lo: float, v_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """Set the canvas window to the pixels boxing the (u, v) rectangle; return its (1, h, w) u and v."""
        self.canvas.set_window(self.grid.box(u_lo, u_hi, v_lo, v_hi))
        return self.grid.u[None, *self.canvas.window], self.grid.v[None, *self.canvas.window]


@dataclass
class _Ventricles:
    """The ventricles' window and the distance fields computed over it, reused by the RV and LV steps."""

    window: tuple[slice, slice]
    d_epi: np.ndarray
    """LV epicardium (T, h, w)."""
    d_rv: np.ndarray
    """RV outer ellipse (T, h, w)."""
    centre_lv: np.ndarray
    rv_u0: np.ndarray
    rv_v0: np.ndarray
    cos_l: np.float32
    sin_l: np.float32
    t_rvw: float
    """RV free wall thickness (mm)."""

    def crop(self, inner: tuple[slice, slice]) -> tuple[slice, ...]:
        """Index of window ``inner`` inside the (T, h, w) fields computed over the ventricles' window."""
        return (slice(None), *(slice(i.start - o.start, i.stop - o.start) for o, i in zip(self.window, inner)))


def _place(p: Physiology, geo: Geometry, tissue: Tissue, cfg: PhantomConfig, spacing: float, edge: float,
           rng: np.random.Generator) -> _Scene:
    """Heart frame (u, v) → image (x right, y down, mm from the centre), apex up, tilted; the background."""
    size = cfg.image_size
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
    grid = Grid(u=u_img, v=v_img, origin=origin, axes=np.stack([e_u, e_v]), spacing=spacing)
    canvas = Canvas(_background(grid, geo, tissue, edge, rng, apex_epi, v_rv_wall), cfg.n_frames, edge)
    return _Scene(geo, tissue, grid, canvas, xx, yy, apex_epi, v_septum, v_rv_wall, v_lat_wall, la_v, ra_v)


def _paint_fat(scene: _Scene, rng: np.random.Generator) -> _Ventricles:
    """Ventricles: LV epicardium (septal/lateral halves), RV crescent, epicardial fat and pericardium."""
    geo, canvas, tissue, f = scene.geo, scene.canvas, scene.tissue, per_frame
    fat_lv, fat_rv = float(rng.uniform(1.0, 3.0)), float(rng.uniform(2.5, 6.0))
    rv_lean_deg = float(rng.uniform(10, 22))
    t_rvw = float(rng.uniform(2.5, 3.5))
    # Margins: AV-groove fat (≤ 5 mm), pericardium, soft edge, and the ellipse distance's shortfall far outside.
    u, v = scene.window(-16.0, scene.apex_epi + fat_rv + 8, scene.v_rv_wall - t_rvw - fat_rv - 14,
                        scene.v_lat_wall + fat_lv + 10)
    ventricles = canvas.window
    groove = (5.0 * np.exp(-(((u - 4.0) / 12.0) ** 2)) + 2.5 * np.exp(-(((u - scene.apex_epi) / 15.0) ** 2))).astype(
        np.float32)
    centre_lv = f(geo.uv + BETA * geo.a)
    left = v < 0
    d_epi_full = ellipse_distance(u - centre_lv, v, f(1 / (geo.a + geo.t_apex)),
                                   by_side(left, 1 / (geo.r_sep + geo.t_sep), 1 / (geo.r_lat + geo.t_lat)))
    # RV: an ellipse cut at its equator by the tricuspid plane, its long axis leaning towards the LV apex.
    lean = np.deg2rad(rv_lean_deg)
    cos_l, sin_l = np.float32(np.cos(lean)), np.float32(np.sin(lean))
    rv_u0, rv_v0 = geo.utv, scene.v_septum - 0.3 * geo.rv_w
    d_rv_full = ellipse_distance(cos_l * u + sin_l * v - f(cos_l * rv_u0 + sin_l * rv_v0),
                                  cos_l * v - sin_l * u - f(cos_l * rv_v0 - sin_l * rv_u0),
                                  f(1 / geo.rv_len), f(1 / (0.7 * geo.rv_w)))
    d_fat = np.minimum(d_epi_full - fat_lv, d_rv_full - (t_rvw + fat_rv))
    d_fat -= groove
    d_fat = np.maximum(d_fat, f(geo.uv - 12.0) - u)  # ends 12 mm below the mitral plane
    canvas.paint(d_fat - 1.5, tissue.pericardium)
    canvas.paint(d_fat, tissue.fat)
    return _Ventricles(ventricles, d_epi_full, d_rv_full, centre_lv, rv_u0, rv_v0, cos_l, sin_l, t_rvw)


def _paint_atria(scene: _Scene, rng: np.random.Generator) -> None:
    """Atria (painted before the ventricles, whose basal myocardium overlaps their roofs).

    Each in its own window: the other atrium's pixels are far outside its wall.
    """
    geo, canvas, tissue, f = scene.geo, scene.canvas, scene.tissue, per_frame
    wall = float(rng.uniform(1.0, 1.8))
    top = float(max(geo.uv.max(), geo.utv.max())) + 4
    for plane, a, b, v_c, label in ((geo.utv, geo.ra_a, geo.ra_b, scene.ra_v, 5),
                                    (geo.uv, geo.la_a, geo.la_b, scene.la_v, 4)):
        u_a, v_a = scene.window(float((plane - 2 * a).min()) - 6, top, v_c - float(b.max()) - 6,
                                v_c + float(b.max()) + 6)
        d = np.maximum(ellipse_distance(u_a - f(plane - 0.5 * a), v_a - np.float32(v_c), f(1 / a), f(1 / b)),
                       u_a - f(plane))
        canvas.paint(d - wall, tissue.myo)
        canvas.paint(d, 0.97, label=label)


def _paint_rv(scene: _Scene, ventricles: _Ventricles, rng: np.random.Generator) -> None:
    """RV wall and blood pool (in the ventricles' window left of the septum), then the moderator band."""
    geo, canvas, tissue, f, vent = scene.geo, scene.canvas, scene.tissue, per_frame, ventricles
    u_rv, v_rv = scene.window(float(geo.utv.min()) - 6, scene.apex_epi, scene.v_rv_wall - vent.t_rvw - 5, 0.0)
    d_rv = vent.d_rv[vent.crop(canvas.window)]
    below_tv = f(geo.utv) - u_rv  # > 0 below the tricuspid plane
    canvas.paint(np.maximum(d_rv - vent.t_rvw, below_tv - 3.0), tissue.myo)
    canvas.label(np.maximum(d_rv, below_tv), 3)
    below_tv -= 2.5
    canvas.paint(np.maximum(d_rv, below_tv, out=below_tv), 1.0)
    # Moderator band: a muscular bar across the RV from the septum to the free wall, towards its apex.
    cos_l, sin_l = vent.cos_l, vent.sin_l
    along = rng.uniform(0.6, 0.75)
    wall_u = vent.rv_u0 + cos_l * along * geo.rv_len + sin_l * 0.6 * geo.rv_w
    wall_v = vent.rv_v0 + sin_l * along * geo.rv_len - cos_l * 0.6 * geo.rv_w
    band_u = wall_u + rng.uniform(4.0, 10.0)
    height = np.clip((band_u - geo.uv - BETA * geo.a) / (geo.a + geo.t_apex), -1.0, 1.0)
    band_v = scene.v_septum * np.sqrt(1 - height**2) + 1.0
    canvas.paint(segment_distance(u_rv, v_rv, band_u, band_v, wall_u, wall_v, rng.uniform(0.7, 1.1)), tissue.myo)


def _paint_lv(scene: _Scene, ventricles: _Ventricles) -> None:
    """LV myocardium, then its blood pool (the LV covers the RV's right part)."""
    geo, canvas, tissue, f = scene.geo, scene.canvas, scene.tissue, per_frame
    u, v = scene.window(-6.0, scene.apex_epi + 2, float(scene.v_septum.min()) - 3, scene.v_lat_wall + 2)
    below_mv = f(geo.uv) - u  # > 0 below the mitral plane
    canvas.paint(np.maximum(ventricles.d_epi[ventricles.crop(canvas.window)], below_mv - 2.0), tissue.myo, label=2)
    d_cav = ellipse_distance(u - ventricles.centre_lv, v, f(1 / geo.a),
                              by_side(v < 0, 1 / geo.r_sep, 1 / geo.r_lat))
    canvas.label(np.maximum(d_cav, below_mv), 1)
    below_mv -= 2.5
    canvas.paint(np.maximum(d_cav, below_mv, out=below_mv), 1.0)


def _paint_papillary_muscle(scene: _Scene, rng: np.random.Generator) -> None:
    """Anterolateral papillary muscle: a dark oval on the lateral wall, shortening and thickening in systole
    (labelled blood pool, as in the UK Biobank contours)."""
    geo, f = scene.geo, per_frame
    pm_u = geo.uv + (1 + BETA) * geo.a * rng.uniform(0.4, 0.55)
    pm_len = rng.uniform(8.0, 11.0) * np.sqrt(geo.a / geo.a[0])
    pm_w = rng.uniform(3.5, 5.0) * np.sqrt(geo.a[0] / geo.a)
    pm_v = geo.r_lat * np.sqrt(np.maximum(1 - ((pm_u - geo.uv - BETA * geo.a) / geo.a) ** 2, 0.1)) - 0.8 * pm_w
    reach = float(pm_len.max()) + 4  # semi-axis, soft edge and the distance's shortfall beyond the tip
    u, v = scene.window(float(pm_u.min()) - reach, float(pm_u.max()) + reach, float((pm_v - pm_w).min()) - 4,
                        float((pm_v + pm_w).max()) + 4)
    scene.canvas.paint(ellipse_distance(u - f(pm_u), v - f(pm_v), f(1 / pm_len), f(1 / pm_w)),
                       scene.tissue.myo * 1.1)


def _paint_valves(scene: _Scene, opening: np.ndarray) -> None:
    """Valve leaflets: hinged at the annuli, meeting in systole, swinging into the ventricles in diastole."""
    geo = scene.geo
    base = np.sqrt(1 - BETA**2)
    mv = (geo.uv, -geo.r_sep * base, geo.r_lat * base)
    tv_sep = -(geo.r_sep * base + geo.t_sep)
    tv = (geo.utv, tv_sep, tv_sep - 0.85 * geo.rv_w)
    for plane, hinge_a, hinge_b in (mv, tv):
        span = np.abs(hinge_b - hinge_a)
        u, v = scene.window(float(plane.min()) - 6, float((plane + 0.6 * span).max()) + 4,
                            float(np.minimum(hinge_a, hinge_b).min()) - 4,
                            float(np.maximum(hinge_a, hinge_b).max()) + 4)
        meet = hinge_a + 0.55 * (hinge_b - hinge_a)
        leaflets = None
        for hinge, length in ((hinge_a, 0.62), (hinge_b, 0.5)):
            closed = (plane - 2.5, meet)
            open_ = (plane + 0.9 * length * span, hinge + 0.25 * (meet - hinge))
            tip_u = closed[0] + opening * (open_[0] - closed[0])
            tip_v = closed[1] + opening * (open_[1] - closed[1])
            d = segment_distance(u, v, plane, hinge, tip_u, tip_v, 0.8)
            leaflets = d if leaflets is None else np.minimum(leaflets, d, out=leaflets)
        scene.canvas.paint(leaflets, 0.6 * scene.tissue.myo)


def _background(grid: Grid, geo: Geometry, tissue: Tissue, edge: float, rng: np.random.Generator,
                apex_epi: float, v_rv_wall: float) -> np.ndarray:
    """Static (H, W) anatomy around the heart: chest wall, lungs with vessels, liver, descending aorta."""
    inv = np.float32(1.0 / edge)
    u, v = grid.u, grid.v

    def over(img: np.ndarray, d: np.ndarray, value: float) -> None:
        img += np.clip(0.5 - d * inv, 0.0, 1.0) * (np.float32(value) - img)

    def ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, bv: float) -> np.ndarray:
        return ellipse_distance(u - np.float32(cu), v - np.float32(cv), np.float32(1 / au), np.float32(1 / bv))

    img = np.zeros(u.shape, dtype=np.float32)
    # Thorax: the apex touches the anterior chest wall (skin, subcutaneous fat, muscle), lungs inside.
    muscle, sc_fat = rng.uniform(9, 15), rng.uniform(6, 20)
    top = apex_epi + rng.uniform(4, 10) + muscle + sc_fat
    body = ellipse(u, v, top - 260, rng.uniform(-40, 0), 260, 420)
    over(img, body, tissue.fat)
    over(img, body + sc_fat, tissue.muscle)
    over(img, body + sc_fat + muscle, tissue.lung)
    # Ribs in the chest wall: oblique sections, dark cortex around fatty marrow. Small structures are
    # computed over their own box of pixels (their soft edges end well inside it).
    body_cv = float(np.mean(v[body < 0])) if np.any(body < 0) else 0.0
    for rib_v in rng.uniform(-90, 90) + np.cumsum(rng.uniform(45, 75, size=4)) - 150:
        ratio = np.clip((rib_v - body_cv) / (420 - sc_fat - muscle), -0.95, 0.95)
        rib_u = top - 260 + (260 - sc_fat - muscle + 1) * np.sqrt(1 - ratio**2)
        au, bv = rng.uniform(5, 7), rng.uniform(9, 14)
        box = grid.box(rib_u - au - 5, rib_u + au + 5, rib_v - bv - 5, rib_v + bv + 5)
        rib = ellipse(u[box], v[box], rib_u, rib_v, au, bv)
        over(img[box], rib, 0.08)
        over(img[box], rib + 1.8, 0.7 * tissue.fat)
    # Lung texture: smooth low-frequency variation and a few vessels (Gaussians, cut at 4 SD).
    for _ in range(6):
        cu, cv = rng.uniform(-90, apex_epi), rng.uniform(-140, 120)
        r = rng.uniform(1.5, 3.5)
        box = grid.box(cu - 4 * r, cu + 4 * r, cv - 4 * r, cv + 4 * r)
        vessel = np.exp(-((u[box] - cu) ** 2 + (v[box] - cv) ** 2) / (2 * r * r))
        img[box] += (vessel * rng.uniform(0.15, 0.4) * (img[box] < tissue.lung + 0.05)).astype(np.float32)
    # Liver beyond the diaphragm, lateral to the right heart (the image's left), towards the apex level.
    liver_u, liver_v = apex_epi * rng.uniform(0.1, 0.5), v_rv_wall - rng.uniform(25, 45) - 110
    liver = ellipse(u, v, liver_u, liver_v, 150, 110)
    over(img, liver - 4, tissue.pericardium)
    over(img, liver, tissue.liver)
    # Descending aorta, behind the left atrium.
    low = -1.5 * float(geo.la_a.max())
    over(img, ellipse(u, v, low - 9, rng.uniform(0, 25), 11, 11), rng.uniform(0.75, 0.95))
    return img


def _acquire(frames: np.ndarray, xx: np.ndarray, yy: np.ndarray, cfg: PhantomConfig,
             rng: np.random.Generator) -> np.ndarray:
    """Receive-coil shading, Rician noise (magnitude of a complex Gaussian), gain → uint8. ``frames`` is consumed."""
    # Anterior surface coil: brighter towards the chest wall (image top), plus smooth inhomogeneity.
    # (H, W) maps in float32: Python-float coefficients keep them there.
    direction = -np.pi / 2 + rng.uniform(-0.8, 0.8)
    span = float(xx.max() - xx.min())
    ramp = (float(np.cos(direction)) * xx + float(np.sin(direction)) * yy) / span
    shading = 1.0 + rng.uniform(0.2, 0.5) * ramp
    for _ in range(4):
        cx, cy, r = rng.uniform(-0.4, 0.4) * span, rng.uniform(-0.4, 0.4) * span, rng.uniform(0.15, 0.3) * span
        shading *= 1.0 + rng.uniform(-0.12, 0.12) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    sigma = float(rng.uniform(*cfg.noise))
    gain = float(rng.uniform(170, 220))
    shading *= gain
    bank, bank_sq = _noise_bank_arrays()
    o1, o2 = (int(o) for o in rng.integers(0, bank.size - frames.size, size=2))
    # |S + σ(n1 + i·n2)| with S, σ already multiplied by the gain; a few frames at a time, in cache.
    out = np.empty(frames.shape, dtype=np.uint8)
    chunk = max(1, _ACQUIRE_CHUNK // frames[0].size)
    real, imag = np.empty((2, chunk, *frames.shape[1:]), dtype=np.float32)
    for t0 in range(0, len(frames), chunk):
        signal = frames[t0:t0 + chunk]
        n, start = signal.size, t0 * frames[0].size
        re, im = real[:len(signal)], imag[:len(signal)]
        np.multiply(bank[o1 + start:o1 + start + n].reshape(signal.shape), np.float32(sigma * gain), out=re)
        signal *= shading
        re += signal
        re *= re
        np.multiply(bank_sq[o2 + start:o2 + start + n].reshape(signal.shape), np.float32((sigma * gain) ** 2), out=im)
        re += im
        np.sqrt(re, out=re)
        np.clip(re, 0.0, 255.0, out=re)
        out[t0:t0 + chunk] = re
    return out
