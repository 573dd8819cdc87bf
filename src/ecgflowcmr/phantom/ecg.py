"""The phantom's 12-lead ECG: a moving heart dipole (vectorcardiogram) projected onto the leads.

Each wave is a sum of lobes ``a · g(t) · n`` — a (possibly asymmetric) Gaussian in time times a fixed 3-D
direction in Frank coordinates (X to the subject's left, Y to the feet, Z to the back). The lobes' sizes,
directions and timing come from the subject's anatomy and disease (``Physiology``). The dipole is projected
onto the eight independent leads (I, II, V1–V6) with the Dower transform (Dower et al., J Electrocardiol
1980), and III, aVR, aVL, aVF follow from Einthoven's and Goldberger's equations, so a written record obeys
them exactly, as a real one does. Output in mV at ``cfg.ecg_fs``; R-peak sample indices are known exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ecgflowcmr.phantom.cohort import Physiology
from ecgflowcmr.phantom.config import PhantomConfig

DOWER = np.array(
    [  # X, Y, Z → lead (mV per dipole unit); rows I, II, V1..V6
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ]
)


@dataclass
class Lobes:
    """Dipole lobes of one wave; arrays of length L. Times in s relative to the wave's anchor."""

    centre: np.ndarray
    sigma_left: np.ndarray
    sigma_right: np.ndarray
    amplitude: np.ndarray
    direction: np.ndarray
    """(L, 3) unit vectors in Frank coordinates."""

    @classmethod
    def of(cls, rows: list[tuple[float, float, float, float, np.ndarray]]) -> Lobes:
        """From rows ``(centre, sigma_left, sigma_right, amplitude, direction)``."""
        c, sl, sr, a, d = zip(*rows)
        return cls(np.array(c), np.array(sl), np.array(sr), np.array(a), np.stack(d))

    def dipole(self, t: np.ndarray) -> np.ndarray:
        """Dipole (3, len(t)) at times ``t`` (s, relative to the anchor)."""
        dt = t[None, :] - self.centre[:, None]
        sigma = np.where(dt < 0, self.sigma_left[:, None], self.sigma_right[:, None])
        g = self.amplitude[:, None] * np.exp(-0.5 * (dt / sigma) ** 2)
        return self.direction.T @ g


@dataclass(frozen=True)
class BeatTiming:
    """One beat of the record as a cine would show it: its R-peak and its events relative to it (s)."""

    rpeak: int
    rr_s: float
    t_end_s: float
    atrial_s: float
    next_qrs_s: float


@dataclass
class ECGResult:
    """A simulated record and the timing the cine is tied to."""

    signal: np.ndarray
    """(12, n) float32 mV, leads I II III aVR aVL aVF V1..V6."""
    rpeaks: np.ndarray
    """int64 sample indices of every R-peak inside the record."""
    heart_rate_bpm: float
    """60 / mean R-R over the record."""
    qt_ms: float
    """Mean QT (QRS onset → T end) over the record's beats."""
    sokolow_lyon_mv: float
    """S(V1) + max(R(V5), R(V6)) of the noise-free beat."""
    cine_rpeak: int
    """Sample index of the R-peak that starts the beat the cine shows."""
    cine_rr_s: float
    """Length of that beat (s): the cine's 50 frames span it."""
    cine_t_end_s: float
    """End of that beat's T wave, relative to its R-peak (s): end-systole."""
    cine_atrial_s: float
    """Onset of the next P wave, relative to the R-peak (s): the atrial kick follows it."""
    cine_next_qrs_s: float
    """Onset of the next QRS, relative to the R-peak (s)."""
    candidate_beats: tuple[BeatTiming, ...] = ()
    """The beats the cine was drawn from, each equally likely (the record's middle one and its neighbours;
    the cine shows the one at ``cine_rpeak``): which one a cine shows is not in the ECG."""

    def on_beat(self, beat: BeatTiming) -> ECGResult:
        """The same record with the cine tied to ``beat`` instead (one of ``candidate_beats``)."""
        return replace(self, **_cine_fields(beat))


def _cine_fields(beat: BeatTiming) -> dict[str, int | float]:
    """``beat`` as ECGResult's ``cine_*`` fields."""
    return {f"cine_{name}": value for name, value in asdict(beat).items()}


def _dir(frontal_deg: float, posterior: float) -> np.ndarray:
    """Unit vector at ``frontal_deg`` in the frontal plane (0° = left, 90° = feet) tilted to the back."""
    a = np.deg2rad(frontal_deg)
    v = np.array([np.cos(a), np.sin(a), posterior])
    return v / np.linalg.norm(v)


def beat_lobes(p: Physiology, rng: np.random.Generator) -> tuple[Lobes, Lobes, Lobes]:
    """(P, QRS, T) lobes of the subject's beat. P is anchored at its onset, QRS at its onset, T at its end."""
    q = p.qrs_ms / 1000.0
    a = p.voltage_scale
    axis = p.qrs_axis_deg
    # P: atrial depolarisation, leftward-inferior; larger and longer with enlarged atria.
    la_big = np.clip(p.lav_max_ml / 75.0, 0.8, 2.5)
    p_dur = 0.085 + 0.02 * (la_big - 1.0) + rng.uniform(0, 0.015)
    p_amp = rng.uniform(0.10, 0.17) * la_big**0.5
    p_dir = _dir(rng.uniform(45, 65), rng.uniform(-0.3, 0.1))
    p_lobes = Lobes.of([(0.45 * p_dur, p_dur / 5, p_dur / 5, p_amp, p_dir),
                        (0.62 * p_dur, p_dur / 6, p_dur / 6, 0.35 * p_amp * (la_big - 0.5), _dir(40, 0.8))])
    main = _dir(axis, rng.uniform(0.35, 0.65))
    if p.lbbb:
        # LBBB: septum activated right→left (no septal q in I, V5–6), slow leftward-posterior spread, notched R.
        qrs = [(0.18 * q, 0.08 * q, 0.08 * q, 0.25 * a, _dir(axis - 10, 0.6)),
               (0.40 * q, 0.12 * q, 0.12 * q, 1.0 * a, _dir(axis, 1.1)),
               (0.70 * q, 0.10 * q, 0.10 * q, 0.6 * a, _dir(axis - 25, 1.0))]
        t_dir, t_amp = -_dir(axis, 1.0), rng.uniform(0.25, 0.45)  # discordant T
    else:
        qrs = [(0.16 * q, 0.07 * q, 0.07 * q, 0.13 * a, _dir(160, -1.5)),  # septal: right, anterior
               (0.46 * q, 0.12 * q, 0.11 * q, a, main),
               (0.76 * q, 0.09 * q, 0.09 * q, 0.28 * a, _dir(-100, 0.9))]  # basal: superior, posterior
        t_dir, t_amp = _dir(axis - rng.uniform(0, 20), rng.uniform(-0.6, -0.2)), rng.uniform(0.22, 0.42)
    if p.diagnosis == "hcm":  # strain: deep lateral T inversion with ST depression
        t_dir, t_amp = _dir(rng.uniform(165, 200), rng.uniform(-0.6, -0.2)), rng.uniform(0.35, 0.8)
    if p.diagnosis == "rcm":
        t_amp *= 0.5
    if p.diagnosis == "mi":
        # Pathological Q: the initial forces point away from the scar; T turns away from it too.
        away = {"lad": _dir(30, 3.0), "rca": _dir(-80, 0.3), "lcx": _dir(175, -0.4)}[p.mi_territory]
        qrs[0] = (0.2 * q, 0.09 * q, 0.09 * q, rng.uniform(0.35, 0.55) * a, away)
        if p.mi_territory == "lad":  # lost anterior forces: poor R progression
            qrs[1] = (0.46 * q, 0.12 * q, 0.11 * q, a, _dir(axis, 1.2))
        t_dir, t_amp = away, rng.uniform(0.2, 0.45)
    t_sr = rng.uniform(0.030, 0.040)
    t_sl = t_sr * rng.uniform(1.6, 2.2)
    t_rows = [(-2.5 * t_sr, t_sl, t_sr, t_amp, t_dir)]
    if p.diagnosis == "hcm":
        t_rows.append((-2.5 * t_sr - 0.09, 0.05, 0.05, 0.25 * t_amp, t_dir))  # ST depression
    return p_lobes, Lobes.of(qrs), Lobes.of(t_rows)


def _independent_to_12(x8: np.ndarray) -> np.ndarray:
    """(8, n) I, II, V1..V6 → (12, n) in LEADS order via Einthoven/Goldberger."""
    lead_i, lead_ii = x8[0], x8[1]
    limb = np.stack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
                     lead_ii - lead_i / 2])
    return np.concatenate([limb, x8[2:]], axis=0)


def simulate_ecg(p: Physiology, rng: np.random.Generator, cfg: PhantomConfig) -> ECGResult:
    """The subject's 12-lead record (mV), its R-peaks, and the timing of the beat the cine shows."""
    fs, n = cfg.ecg_fs, round(cfg.ecg_seconds * cfg.ecg_fs)
    p_lobes, qrs_lobes, t_lobes = beat_lobes(p, rng)
    rr_mean = 60.0 / p.heart_rate_bpm
    f_resp, ph_resp = rng.uniform(0.18, 0.32), rng.uniform(0, 2 * np.pi)
    rsa = cfg.respiratory_arrhythmia * rng.uniform(0.3, 1.0) * (1.3 - 0.01 * (p.age_years - 45))

    # Beat onsets (s): start one beat before the record so its T and the next P are there at t = 0.
    onsets, t = [], -rng.uniform(0.3, 1.0) * rr_mean
    while t < cfg.ecg_seconds + 0.2:
        onsets.append(t)
        wobble = rsa * np.sin(2 * np.pi * f_resp * t + ph_resp) + cfg.rr_variability * rng.standard_normal()
        t += rr_mean * (1 + np.clip(wobble, -0.12, 0.12))
    q_onsets = np.round(np.array(onsets) * fs).astype(np.int64)

    # The noise-free QRS fixes the R-peak: the maximum of lead II within the QRS.
    rel_qrs = np.arange(int(0.2 * fs)) / fs
    qrs_dip = qrs_lobes.dipole(rel_qrs)
    template8 = DOWER @ qrs_dip
    r_off = int(np.argmax(template8[1][: int(p.qrs_ms / 1000 * fs) + 1]))
    s_v1 = -template8[2].min()
    r_v56 = max(template8[6].max(), template8[7].max())

    dipole = np.zeros((3, n))
    pad_before, pad_after = int(0.45 * fs), int(0.75 * fs)
    rel = np.arange(-pad_before, pad_after) / fs
    qts = []
    # QRS and P keep their shape from beat to beat (only T moves with the preceding R-R): computed once.
    qrs_beat, p_beat = qrs_lobes.dipole(rel), p_lobes.dipole(rel + p.pr_ms / 1000)
    for k, q0 in enumerate(q_onsets):
        rr_prev = (q_onsets[k] - q_onsets[k - 1]) / fs if k > 0 else rr_mean
        qt = min(p.qtc_ms / 1000 * np.sqrt(rr_prev), 0.62 * rr_prev + 0.05)
        qts.append(qt)
        m = 1 + 0.05 * np.sin(2 * np.pi * f_resp * q0 / fs + ph_resp + 1.0)  # respiration moves the heart
        beat = m * (qrs_beat + t_lobes.dipole(rel - qt)) + p_beat
        idx = q0 + np.arange(-pad_before, pad_after)
        keep = (idx >= 0) & (idx < n)
        dipole[:, idx[keep]] += beat[:, keep]

    x8 = DOWER @ dipole
    x8[2:] *= np.exp(rng.normal(0, 0.08, size=(6, 1)))  # electrode placement: not explained by anatomy
    x8 += _noise(rng, cfg, n, fs)
    signal = _independent_to_12(x8).astype(np.float32)

    rpeaks = q_onsets + r_off
    inside = (rpeaks >= 0) & (rpeaks < n)
    # The cine's beat: the middle one of those that start at an R-peak and whose next P and QRS are inside the
    # record, or either neighbour (a cine is acquired apart from the ECG: which beat it shows is not in the ECG).
    candidates = [k for k in range(len(q_onsets) - 2) if inside[k] and q_onsets[k + 1] + r_off < n - 1]

    def timing(k: int) -> BeatTiming:
        r0 = int(rpeaks[k])
        return BeatTiming(rpeak=r0, rr_s=float((rpeaks[k + 1] - r0) / fs),
                          t_end_s=float((q_onsets[k] - r0) / fs + qts[k]),
                          atrial_s=float((q_onsets[k + 1] - r0) / fs - p.pr_ms / 1000),
                          next_qrs_s=float((q_onsets[k + 1] - r0) / fs))

    beats = tuple(timing(candidates[int(np.clip(len(candidates) // 2 + d, 0, len(candidates) - 1))])
                  for d in (-1, 0, 1))
    shown = beats[int(rng.integers(0, 3))]
    in_record = rpeaks[inside]
    return ECGResult(
        signal=signal,
        rpeaks=in_record.astype(np.int64),
        heart_rate_bpm=float(60.0 * fs / np.mean(np.diff(in_record))),
        qt_ms=float(1000 * np.mean([qt for qt, i in zip(qts, inside) if i])),
        sokolow_lyon_mv=float(s_v1 + r_v56),
        candidate_beats=beats,
        **_cine_fields(shown),
    )


def _noise(rng: np.random.Generator, cfg: PhantomConfig, n: int, fs: int) -> np.ndarray:
    """(8, n) mV: respiratory baseline wander + slow drift, mains hum, muscle noise (per independent lead)."""
    t = np.arange(n) / fs
    f = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.03, 0.08)])
    amp = cfg.baseline_wander_mv * rng.uniform(0.2, 1.0, size=(8, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(8, 2))
    hum = cfg.mains_mv * rng.uniform(0, 1, size=8)
    hum_phase = rng.uniform(0, 2 * np.pi, size=8)
    # a·sin(ωt + φ) = a·cos φ · sin ωt + a·sin φ · cos ωt: three frequencies, shared by the leads.
    omega = 2 * np.pi * np.array([f[0], f[1], cfg.mains_hz])
    basis = np.concatenate([np.sin(omega[:, None] * t), np.cos(omega[:, None] * t)])  # (6, n)
    a = np.concatenate([amp, hum[:, None]], axis=1)  # (8, 3)
    ph = np.concatenate([phase, hum_phase[:, None]], axis=1)
    out = np.concatenate([a * np.cos(ph), a * np.sin(ph)], axis=1) @ basis
    emg = rng.standard_normal((8, n + 2)) * (cfg.muscle_noise_mv * rng.uniform(0.2, 1.0))
    out += (emg[:, :-2] + emg[:, 1:-1] + emg[:, 2:]) / np.sqrt(3)
    return out
