"""The phantom's heart: its motion over one beat and its four-chamber geometry (rendered by ``cine.py``).

A parametric heart in the four-chamber plane, in a heart frame (mm): ``u`` along the LV long axis from the
end-diastolic mitral plane towards the apex, ``v`` across it, positive towards the LV lateral wall. Shown as
in the apical four-chamber display: apex up, ventricles above the atria, LV on the image's right, RV on its
left, tilted by ``Physiology.tilt_deg``.

- LV: a truncated ellipse (the section of a truncated prolate ellipsoid), septal and lateral halves with
  their own radius; myocardium from LV mass (shell volume = LVM / 1.05), thickening with myocardial
  volume conserved; the epicardial apex stays put while the valve plane descends (MAPSE).
- RV: a crescent on the septum whose area follows RV volume, tricuspid plane descending by TAPSE.
- LA, RA: ellipses below their valve planes, volumes mirroring ventricular filling.

Motion follows a normalised ventricular volume curve ``g`` (1 at end-diastole, 0 at end-systole) built from
the ECG's timing: isovolumic contraction after the R-peak, ejection ending at the end of the T wave,
isovolumic relaxation, rapid filling, diastasis, and the atrial kick after the next P wave.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgflowcmr.phantom.cohort import (
    APEX_RATIO,
    LV_K_VOLUME,
    LV_TRUNCATION,
    MYOCARDIUM_DENSITY_G_ML,
    Physiology,
)
from ecgflowcmr.phantom.ecg import ECGResult

BETA = LV_TRUNCATION
K_VOLUME = LV_K_VOLUME


# ---------------------------------------------------------------------------------------- volume curve


def filling_curve(tau: np.ndarray, ecg: ECGResult, p: Physiology) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ventricular volume g(τ) ∈ [0, 1] at times τ (s) after the R-peak (1 = ED, 0 = ES), and
    the opening of the atrioventricular valves (0 closed … 1 open) at the same times."""
    rr = ecg.cine_rr_s
    t_ivc = 0.035  # R-peak → aortic valve opening
    t_es = float(np.clip(ecg.cine_t_end_s, t_ivc + 0.12, rr - 0.2))
    t_mo = t_es + 0.06  # isovolumic relaxation → mitral opening
    t_a0 = float(np.clip(ecg.cine_atrial_s + 0.06, t_mo + 0.04, rr - 0.06))  # atrial contraction begins
    t_a1 = min(ecg.cine_next_qrs_s + 0.01, rr)
    t_rf = min(t_mo + 0.16 * np.sqrt(rr), t_a0)
    early = p.early_filling * min(1.0, (t_rf - t_mo) / (0.16 * np.sqrt(rr)) + 0.3)
    pre_a = 1.0 - p.atrial_kick
    early = min(early, pre_a)

    g = np.ones_like(tau)
    x = np.clip((tau - t_ivc) / (t_es - t_ivc), 0, 1)
    ejection = 1.0 - 0.5 * (1 - np.cos(np.pi * x**0.75))
    g = np.where(tau >= t_ivc, ejection, g)
    g = np.where(tau >= t_es, 0.0, g)
    x = np.clip((tau - t_mo) / max(t_rf - t_mo, 1e-3), 0, 1)
    g = np.where(tau >= t_mo, early * (1 - (1 - x) ** 2), g)
    x = np.clip((tau - t_rf) / max(t_a0 - t_rf, 1e-3), 0, 1)
    g = np.where(tau >= t_rf, early + (pre_a - early) * x, g)
    x = np.clip((tau - t_a0) / max(t_a1 - t_a0, 1e-3), 0, 1)
    g = np.where(tau >= t_a0, pre_a + (1 - pre_a) * 0.5 * (1 - np.cos(np.pi * x)), g)
    # AV valves: closed from the R-peak through ejection and isovolumic relaxation, wide open in rapid
    # filling, half-floating in diastasis, open again with the atrial kick, closing at the next QRS.
    opening = np.interp(tau, [0, t_mo - 0.01, t_mo + 0.03, t_rf, 0.5 * (t_rf + t_a0), t_a0, t_a0 + 0.04,
                              t_a1 - 0.04, t_a1], [0, 0, 1, 0.9, 0.45, 0.45, 0.9, 0.8, 0])
    return g, opening


# ------------------------------------------------------------------------------------------ geometry


@dataclass
class Geometry:
    """Per-frame heart geometry (arrays of length T; mm, heart frame)."""

    uv: np.ndarray  # mitral plane
    a: np.ndarray  # LV cavity semi-axis along u (cavity length = (1 + BETA) a)
    r_sep: np.ndarray  # cavity half-width, septal side
    r_lat: np.ndarray  # cavity half-width, lateral side
    t_sep: np.ndarray  # wall thickness, septum
    t_lat: np.ndarray  # wall thickness, lateral wall
    t_apex: np.ndarray  # wall thickness, apex
    utv: np.ndarray  # tricuspid plane
    rv_len: np.ndarray  # tricuspid plane → RV apex
    rv_w: np.ndarray  # RV width at mid level
    la_a: np.ndarray  # LA semi-axes (u, v)
    la_b: np.ndarray
    ra_a: np.ndarray
    ra_b: np.ndarray


def _shell_thickness(r: np.ndarray, a: np.ndarray, myo_mm3: float, apex_ratio: float) -> np.ndarray:
    """Mean wall thickness t: the shell between the cavity (r, a) and (r + t, a + apex_ratio·t), both cut
    like the cavity (volume π R² A · K_VOLUME), holds ``myo_mm3``. Newton on the cubic in t."""
    k = np.pi * K_VOLUME
    target = k * r**2 * a + myo_mm3
    t = np.full_like(r, 10.0)
    for _ in range(6):
        big_r, big_a = r + t, a + apex_ratio * t
        value = k * big_r**2 * big_a - target
        slope = k * (2 * big_r * big_a + apex_ratio * big_r**2)
        t = np.maximum(t - value / slope, 0.5)
    return t


def heart_geometry(p: Physiology, g: np.ndarray, rng: np.random.Generator) -> Geometry:
    """Geometry for each value of the volume curve ``g`` (1 = ED, 0 = ES): LV volume = ESV + SV·g exactly."""
    edv = p.lvedv_ml * 1000.0
    esv = edv * (1 - p.lvef_pct / 100.0)
    vol = esv + (edv - esv) * g
    myo = p.lvm_g / MYOCARDIUM_DENSITY_G_ML * 1000.0
    apex_ratio = APEX_RATIO
    length = p.sphericity * (p.lvedv_ml ** (1 / 3)) * 10.0
    a_ed = length / (1 + BETA)
    r_ed = np.sqrt(edv / (np.pi * a_ed * K_VOLUME))
    t_ed = float(_shell_thickness(np.array([r_ed]), np.array([a_ed]), myo, apex_ratio)[0])
    apex_epi = (1 + BETA) * a_ed + apex_ratio * t_ed
    uv = p.mapse_mm * (1 - g)

    # Fixed point: cavity length from the (thickening) apex, width from the volume, thickness from the mass.
    t_mean = np.full_like(g, t_ed)
    for _ in range(3):
        t_apex = apex_ratio * t_mean
        if p.mi_territory == "lad":
            t_apex = np.full_like(g, apex_ratio * t_ed * 0.6)
        a = (apex_epi - t_apex - uv) / (1 + BETA)
        r = np.sqrt(vol / (np.pi * a * K_VOLUME))
        t_mean = _shell_thickness(r, a, myo, apex_ratio)
    sep_frac = 0.88  # the septum is flatter than the lateral wall
    r_sep, r_lat = sep_frac * r, (2 - sep_frac) * r
    scar = {"lad": "sep", "rca": "sep", "lcx": "lat"}.get(p.mi_territory, "")
    motion = 0.35 if p.mi_territory == "rca" else 0.05  # fraction of normal inward motion left in the scar
    if scar == "sep":
        r_sep = sep_frac * r_ed - motion * (sep_frac * r_ed - r_sep)
        r_lat = np.maximum(2 * r - r_sep, 0.3 * r_ed)
    elif scar == "lat":
        r_lat = (2 - sep_frac) * r_ed - motion * ((2 - sep_frac) * r_ed - r_lat)
        r_sep = np.maximum(2 * r - r_lat, 0.3 * r_ed)
    ratio = p.septal_ratio
    t_sep, t_lat = t_mean * 2 * ratio / (1 + ratio), t_mean * 2 / (1 + ratio)
    if scar == "sep":
        t_sep = np.full_like(g, t_ed * 2 * ratio / (1 + ratio) * 0.65)
    elif scar == "lat":
        t_lat = np.full_like(g, t_ed * 2 / (1 + ratio) * 0.65)

    # RV: apex fixed, tricuspid plane descends by TAPSE, width from the volume (≈ w² · length).
    rv_edv = p.rvedv_ml * 1000.0
    rv_vol = rv_edv * (1 - p.rvef_pct / 100.0 * (1 - g))
    rv_len_ed = (1 + BETA) * a_ed * rng.uniform(0.62, 0.74) * (p.rvedv_ml / p.lvedv_ml) ** 0.25
    utv0 = rng.uniform(4.0, 9.0)
    utv = utv0 + p.tapse_mm * (1 - g)
    rv_len = utv0 + rv_len_ed - utv
    rv_w_ed = 0.95 * rv_edv ** (1 / 3) * rng.uniform(0.9, 1.1) * (p.lvedv_ml / p.rvedv_ml) ** 0.1
    rv_w = rv_w_ed * np.sqrt(rv_vol / rv_edv * rv_len_ed / rv_len)

    # Atria: volumes mirror ventricular filling (reservoir in systole, conduit + pump in diastole).
    def atrium(vmax: float, vmin: float, elong: float) -> tuple[np.ndarray, np.ndarray]:
        v = (vmin + (vmax - vmin) * (1 - g)) * 1000.0
        b = (3 * v / (4 * np.pi * elong * 0.75)) ** (1 / 3)  # depth (through-plane) = 0.75 × width
        return elong * b, b

    la_a, la_b = atrium(p.lav_max_ml, p.lav_min_ml, rng.uniform(1.0, 1.25))
    ra_a, ra_b = atrium(p.rav_max_ml, p.rav_min_ml, rng.uniform(0.95, 1.2))
    geo = Geometry(uv=uv, a=a, r_sep=r_sep, r_lat=r_lat, t_sep=t_sep, t_lat=t_lat, t_apex=t_apex, utv=utv,
                   rv_len=rv_len, rv_w=rv_w, la_a=la_a, la_b=la_b, ra_a=ra_a, ra_b=ra_b)
    return geo
