"""Who a phantom subject is: demographics, diagnosis, cardiac phenotypes and the hidden anatomy behind them.

Normal values are drawn around the UK Biobank CMR reference ranges (Petersen et al., JCMR 2017;19:18:
healthy Caucasians aged 45–74, bSSFP at 1.5 T), indexed to body surface area so that size follows body
size, and shifted by disease (docs/decisions.md):

- HCM: thick (asymmetric septal) walls, small cavity, high EF, big LA, high QRS voltage, lateral T inversion;
- DCM: large LV, low EF, thin walls, often a wide LBBB-like QRS;
- RCM (amyloid-like): normal-sized ventricles, thick walls with *low* QRS voltage, big atria, restrictive filling;
- MI: a hypo/akinetic segment in one coronary territory, reduced EF, Q waves and T changes there.

Some variance is deliberately *not* expressed in the ECG (RV and atrial size, LV sphericity, image position,
rotation, scale, contrast): the paper's "anatomical observability gap".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgflowcmr.phantom.config import DIAGNOSES, PhantomConfig

MYOCARDIUM_DENSITY_G_ML = 1.05
LV_TRUNCATION = 0.35
"""The LV is an ellipsoid cut this far (in semi-axes) below its equator: the mitral annulus is narrower."""
LV_K_VOLUME = 2.0 / 3.0 + LV_TRUNCATION - LV_TRUNCATION**3 / 3.0
"""Volume of the truncated ellipsoid = π R² a · LV_K_VOLUME."""
APEX_RATIO = 0.75
"""Apical wall thickness / mean wall thickness."""


def lv_mass_for_wall(edv_ml: float, sphericity: float, wall_mm: float) -> float:
    """LV mass (g) whose shell around a cavity of ``edv_ml`` (shape ``sphericity``) is ``wall_mm`` thick."""
    a = sphericity * edv_ml ** (1 / 3) * 10.0 / (1 + LV_TRUNCATION)
    r = np.sqrt(edv_ml * 1000.0 / (np.pi * a * LV_K_VOLUME))
    shell = np.pi * LV_K_VOLUME * ((r + wall_mm) ** 2 * (a + APEX_RATIO * wall_mm) - r**2 * a)
    return float(shell / 1000.0 * MYOCARDIUM_DENSITY_G_ML)

# Reference values, (mean, SD) per sex (male, female), absolute; after Petersen et al. 2017. The abstract
# gives LVEF 58 ± 5 % (men) / 61 ± 5 % (women) and LV mass index 53 ± 9 / 42 ± 7 g/m²; the other rows are
# approximate (written without the paper's tables at hand; check against Tables 2–5 before quoting them).
# The phantom draws BSA-scaled values so that these absolute means hold at the cohort's mean BSA.
UKB_REFERENCE: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "lvedv_ml": ((166.0, 32.0), (124.0, 21.0)),
    "lvesv_ml": ((69.0, 16.0), (49.0, 11.0)),
    "lvsv_ml": ((97.0, 19.0), (75.0, 13.0)),
    "lvef_pct": ((58.0, 5.0), (61.0, 5.0)),
    "lvm_g": ((103.0, 21.0), (71.0, 13.0)),
    "rvedv_ml": ((182.0, 36.0), (130.0, 24.0)),
    "rvesv_ml": ((79.0, 20.0), (50.0, 13.0)),
    "rvef_pct": ((56.0, 6.0), (62.0, 6.0)),
    "lav_max_ml": ((73.0, 21.0), (67.0, 18.0)),
    "rav_max_ml": ((94.0, 27.0), (73.0, 21.0)),
}
MEAN_BSA = (1.98, 1.72)
"""Cohort mean body surface area (m²) of men and women, to turn the absolute references into indexed ones."""


@dataclass
class Physiology:
    """One subject's ground truth. Volumes in ml, lengths in mm, times in ms, angles in degrees."""

    male: bool
    age_years: float
    height_cm: float
    weight_kg: float
    bsa_m2: float
    diagnosis: str
    mi_territory: str
    """"" unless diagnosis == "mi"; else "lad" (septum + apex), "lcx" (lateral wall) or "rca" (basal septum)."""
    lbbb: bool
    lvedv_ml: float
    lvef_pct: float
    lvm_g: float
    rvedv_ml: float
    rvef_pct: float
    lav_max_ml: float
    lav_min_ml: float
    rav_max_ml: float
    rav_min_ml: float
    septal_ratio: float
    """Septal / lateral wall thickness (1.0 symmetric; HCM 1.4–2.0)."""
    sphericity: float
    """LV long-axis length / (EDV^(1/3) in cm), cm per cm: 1.9 elongated … 1.4 spherical (DCM)."""
    mapse_mm: float
    """Mitral annular plane systolic excursion: the valve plane's descent towards the apex."""
    tapse_mm: float
    """Tricuspid annular plane systolic excursion."""
    early_filling: float
    """Fraction of the stroke volume refilled in rapid filling (E); the rest by diastasis and atrial kick."""
    atrial_kick: float
    """Fraction of the stroke volume filled by atrial contraction (A)."""
    heart_rate_bpm: float
    """Mean heart rate the R-R intervals are drawn around (the manifest reports the realised one)."""
    pr_ms: float
    qrs_ms: float
    qtc_ms: float
    qrs_axis_deg: float
    """Frontal QRS axis; follows the long axis tilt of the heart in the image (``tilt_deg``)."""
    tilt_deg: float
    """Long axis tilt in the image (deg, positive = apex towards the image's right)."""
    voltage_scale: float
    """QRS dipole amplitude (mV) from LV mass, body size, disease, and a part the anatomy does not explain."""


def draw_split(rng: np.random.Generator, cfg: PhantomConfig) -> str:
    """train/val/test/ecg_only from the subject's own stream (so it does not depend on N)."""
    u = rng.random()
    if u < cfg.ecg_only_fraction:
        return "ecg_only"
    u = (u - cfg.ecg_only_fraction) / (1 - cfg.ecg_only_fraction)
    train, val, _ = cfg.split_fractions
    return "train" if u < train else "val" if u < train + val else "test"


def draw_physiology(rng: np.random.Generator, cfg: PhantomConfig) -> Physiology:
    """Demographics, diagnosis and phenotypes of one subject (no ECG or image yet)."""
    male = bool(rng.random() < 0.5)
    sx = 0 if male else 1
    age = float(rng.uniform(*cfg.age_years))
    height = float(np.clip(rng.normal((176.0, 163.0)[sx], (7.0, 6.5)[sx]), 145, 205))
    weight = float(np.clip(rng.normal((84.0, 70.0)[sx], (12.0, 12.0)[sx]), 45, 140))
    bsa = float(np.sqrt(height * weight / 3600.0))  # Mosteller
    names = list(cfg.prevalence)
    diagnosis = str(names[rng.choice(len(names), p=np.array([cfg.prevalence[n] for n in names]))])
    assert diagnosis in DIAGNOSES

    def indexed(name: str, sd_scale: float = 1.0) -> float:
        """An absolute phenotype drawn from its reference, scaled by this subject's BSA."""
        mean, sd = UKB_REFERENCE[name][sx]
        z = np.clip(rng.normal(), -2.5, 2.5)
        return float((mean + sd_scale * 0.75 * sd * z) * (bsa / MEAN_BSA[sx]) ** 0.8)

    ageing = 1.0 - 0.004 * (age - 60.0)  # LV/RV volumes are smaller with age (Petersen 2017)
    lvedv = indexed("lvedv_ml") * ageing
    lvef = float(np.clip(rng.normal(*UKB_REFERENCE["lvef_pct"][sx]), 50, 72))
    lvm = indexed("lvm_g")
    rvedv = float(lvedv * rng.normal(1.08, 0.06))
    rvef = float(np.clip(rng.normal(*UKB_REFERENCE["rvef_pct"][sx]), 47, 72))
    lav_max = indexed("lav_max_ml")
    rav_max = indexed("rav_max_ml")
    la_ef, ra_ef = rng.uniform(0.50, 0.66), rng.uniform(0.42, 0.58)
    septal_ratio = float(rng.uniform(1.0, 1.2))
    sphericity = float(rng.uniform(1.7, 1.95))
    mapse = float(rng.normal(14.0, 1.8))
    tapse = float(rng.normal(22.0, 3.0))
    early = float(np.clip(rng.normal(0.70 - 0.005 * (age - 60), 0.06), 0.45, 0.85))
    kick = float(np.clip(rng.normal(0.18 + 0.003 * (age - 60), 0.04), 0.08, 0.35))
    pr = float(np.clip(rng.normal(158, 18), 120, 210))
    qrs = float(np.clip(rng.normal((94.0, 87.0)[sx], 7.0), 72, 110))
    qtc = float(np.clip(rng.normal((408.0, 420.0)[sx], 14.0), 370, 455))
    voltage = 1.0
    lbbb = False
    territory = ""

    if diagnosis == "hcm":
        lvedv *= rng.uniform(0.70, 0.92)
        lvef = float(rng.uniform(64, 80))
        septal_ratio = float(rng.uniform(1.4, 2.0))
        lav_max *= rng.uniform(1.2, 1.6)
        mapse = float(rng.normal(10.5, 1.5))
        early, kick = float(rng.uniform(0.40, 0.55)), float(rng.uniform(0.25, 0.38))
        qtc += rng.uniform(10, 35)
    elif diagnosis == "dcm":
        lvedv *= rng.uniform(1.5, 2.2)
        lvef = float(rng.uniform(18, 40))
        rvedv *= rng.uniform(1.0, 1.35)
        rvef -= rng.uniform(5, 20)
        lav_max *= rng.uniform(1.2, 1.7)
        sphericity = float(rng.uniform(1.4, 1.65))
        mapse = float(rng.normal(7.5, 1.2))
        tapse -= rng.uniform(2, 8)
        lbbb = bool(rng.random() < 0.6)
        qrs = float(rng.uniform(130, 170)) if lbbb else float(np.clip(qrs + rng.uniform(0, 15), 80, 118))
        qtc += rng.uniform(10, 35)
    elif diagnosis == "rcm":
        lvedv *= rng.uniform(0.75, 1.0)
        lvef = float(rng.uniform(50, 65))
        lvm *= rng.uniform(1.2, 1.6)
        septal_ratio = float(rng.uniform(1.0, 1.2))
        rvef -= rng.uniform(0, 10)
        lav_max *= rng.uniform(1.7, 2.4)
        rav_max *= rng.uniform(1.6, 2.2)
        la_ef, ra_ef = rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.35)
        mapse = float(rng.normal(8.0, 1.2))
        tapse -= rng.uniform(3, 8)
        early, kick = float(rng.uniform(0.80, 0.90)), float(rng.uniform(0.04, 0.08))
        voltage *= rng.uniform(0.35, 0.55)  # amyloid: thick walls, low voltage
        pr += rng.uniform(0, 40)
        qtc += rng.uniform(0, 25)
    elif diagnosis == "mi":
        territory = str(rng.choice(["lad", "lcx", "rca"], p=[0.5, 0.25, 0.25]))
        lvedv *= rng.uniform(1.05, 1.4)
        lvef = float(rng.uniform(25, 50))
        lvm *= rng.uniform(1.0, 1.2)
        lav_max *= rng.uniform(1.0, 1.4)
        mapse = float(rng.normal(10.0, 1.5))
        qtc += rng.uniform(5, 25)

    if diagnosis == "hcm":  # the diagnostic criterion: maximal wall thickness ≥ 15 mm
        septum = rng.uniform(15.5, 24.0)
        lvm = lv_mass_for_wall(lvedv, sphericity, septum * (1 + septal_ratio) / (2 * septal_ratio))
    elif diagnosis == "dcm":  # eccentric hypertrophy: more mass spread thin over a big cavity
        lvm = lv_mass_for_wall(lvedv, sphericity, rng.uniform(5.0, 7.5))
    else:
        lvm = max(lvm, lv_mass_for_wall(lvedv, sphericity, 4.8))
    # Heart rate: resting, lower in men and fitter people; disease with low output runs faster.
    hr_mean = 68.0 + (8.0 if diagnosis in ("dcm", "rcm") else 0.0) + (3.0 if not male else 0.0)
    hr = float(np.clip(rng.normal(hr_mean, 9.0), *cfg.heart_rate_bpm))
    tilt = float(rng.uniform(-cfg.tilt_deg, cfg.tilt_deg))
    # Frontal axis: normal ~ +45°, a more horizontal heart (apex further to the image's right) turns it left.
    axis = 45.0 - 1.2 * tilt + rng.normal(0, 8) - 0.25 * (age - 60)
    if lbbb:
        axis = rng.uniform(30, 50)
    axis = float(np.clip(axis, -10, 95))
    # Voltage criteria: QRS amplitude grows with LV mass, falls with body size (more tissue between
    # heart and electrodes), and carries ~15% of variance the anatomy does not explain.
    voltage *= 1.5 * (lvm / 100.0) ** 0.75 * (1.9 / bsa) ** 0.3 * float(np.exp(rng.normal(0, 0.08)))
    return Physiology(
        male=male, age_years=age, height_cm=height, weight_kg=weight, bsa_m2=bsa, diagnosis=diagnosis,
        mi_territory=territory, lbbb=lbbb, lvedv_ml=float(lvedv), lvef_pct=float(lvef), lvm_g=float(lvm),
        rvedv_ml=float(rvedv), rvef_pct=float(np.clip(rvef, 25, 75)), lav_max_ml=float(lav_max),
        lav_min_ml=float(lav_max * (1 - la_ef)), rav_max_ml=float(rav_max), rav_min_ml=float(rav_max * (1 - ra_ef)),
        septal_ratio=septal_ratio, sphericity=sphericity, mapse_mm=float(np.clip(mapse, 4, 20)),
        tapse_mm=float(np.clip(tapse, 8, 30)), early_filling=early, atrial_kick=kick, heart_rate_bpm=hr,
        pr_ms=pr, qrs_ms=qrs, qtc_ms=float(qtc), qrs_axis_deg=axis, tilt_deg=tilt, voltage_scale=float(voltage),
    )


def has_heart_failure(diagnosis: str, lvef_pct: float) -> bool:
    """HF label: reduced EF (< 40%), or a cardiomyopathy that causes HF regardless of EF (DCM, RCM)."""
    return lvef_pct < 40.0 or diagnosis in ("dcm", "rcm")
