"""Parameters of the paired ECG–CMR phantom (docs/decisions.md), with defaults; YAML overrides, unknown keys fail.

Physiological values (the UK Biobank reference ranges the cohort is drawn around, the disease shifts) live
in :mod:`ecgflowcmr.phantom.cohort`; this config holds what a user would sensibly change: the cohort
mix, the splits, the acquisition and the noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ecgflowcmr.errors import ConfigError

DIAGNOSES: tuple[str, ...] = ("normal", "hcm", "dcm", "rcm", "mi")


def _default_prevalence() -> dict[str, float]:
    return {"normal": 0.6, "hcm": 0.1, "dcm": 0.1, "rcm": 0.1, "mi": 0.1}


@dataclass
class PhantomConfig:
    """Everything `ecgflowcmr phantom` can be told; defaults make a UK Biobank-like paired cohort."""

    prevalence: dict[str, float] = field(default_factory=_default_prevalence)
    """Probability of each diagnosis (normal, hcm, dcm, rcm, mi); must sum to 1."""
    ecg_only_fraction: float = 0.3
    """Fraction of subjects with an ECG and no cine (split ``ecg_only``: the paper's unpaired ECG cohort)."""
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    """train/val/test fractions among the paired subjects; must sum to 1."""
    age_years: tuple[float, float] = (45.0, 80.0)
    """Uniform age range (UK Biobank imaging visit: 45–82)."""
    heart_rate_bpm: tuple[float, float] = (50.0, 100.0)
    """Range of the resting heart rate (drawn ~ normal around 68 bpm, clipped to this range)."""
    rr_variability: float = 0.025
    """Beat-to-beat R-R variability: SD of the random part, as a fraction of the mean R-R."""
    respiratory_arrhythmia: float = 0.03
    """Amplitude of respiratory sinus arrhythmia, as a fraction of the mean R-R."""
    ecg_seconds: float = 10.0
    """ECG duration (s)."""
    ecg_fs: int = 500
    """ECG sampling rate (Hz)."""
    baseline_wander_mv: float = 0.08
    """Typical amplitude of respiratory baseline wander (mV)."""
    mains_hz: float = 50.0
    """Mains frequency (Hz) of the hum."""
    mains_mv: float = 0.01
    """Largest mains hum amplitude (mV); each lead draws between 0 and this."""
    muscle_noise_mv: float = 0.012
    """Largest SD of muscle (EMG-like) noise (mV); each record draws between 20% and 100% of this."""
    image_size: int = 128
    """Cine matrix (square, pixels). The heart covers about half of it, so cropping is real work."""
    n_frames: int = 50
    """Frames over one R-R interval, frame 0 at the R-peak (end-diastole)."""
    pixel_spacing_mm: tuple[float, float] = (1.8, 2.3)
    """Range of the in-plane pixel spacing (mm); the random scale of the heart in pixels."""
    slice_thickness_mm: float = 8.0
    """Slice thickness written to the NIfTI header (mm)."""
    tilt_deg: float = 20.0
    """Largest tilt of the long axis from vertical (deg); the ECG's frontal axis follows it."""
    position_mm: float = 14.0
    """Largest random shift of the heart from the image centre (mm)."""
    noise: tuple[float, float] = (0.015, 0.05)
    """Range of the Rician noise SD relative to the blood signal."""
    edge_blur_px: tuple[float, float] = (0.7, 1.3)
    """Range of the width of tissue edges (pixels): the blur of the acquisition."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.prevalence) - set(DIAGNOSES))
        if unknown:
            raise ConfigError("prevalence", f"unknown diagnosis {unknown[0]!r} (known: {', '.join(DIAGNOSES)})")
        if any(p < 0 for p in self.prevalence.values()) or abs(sum(self.prevalence.values()) - 1) > 1e-6:
            raise ConfigError("prevalence", "probabilities must be ≥ 0 and sum to 1")
        if not 0 <= self.ecg_only_fraction < 1:
            raise ConfigError("ecg_only_fraction", "must be in [0, 1)")
        if min(self.split_fractions) < 0 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError("split_fractions", "train/val/test fractions must be ≥ 0 and sum to 1")
        if not 40 <= self.heart_rate_bpm[0] <= self.heart_rate_bpm[1] <= 120:
            raise ConfigError("heart_rate_bpm", "expected 40 ≤ low ≤ high ≤ 120")
        if self.ecg_fs < 250 or self.ecg_seconds < 5:
            raise ConfigError("ecg_fs", "the ECG needs ≥ 250 Hz and ≥ 5 s")
        if not 64 <= self.image_size <= 512:
            raise ConfigError("image_size", "expected 64..512 pixels")
        if not 8 <= self.n_frames <= 200:
            raise ConfigError("n_frames", "expected 8..200 frames")
        if not 0.5 <= self.pixel_spacing_mm[0] <= self.pixel_spacing_mm[1] <= 4:
            raise ConfigError("pixel_spacing_mm", "expected 0.5 ≤ low ≤ high ≤ 4 mm")
        if self.image_size * self.pixel_spacing_mm[0] < 200:
            raise ConfigError("image_size", "the field of view (size × spacing) must be ≥ 200 mm to hold the heart")
        if not 0 <= self.tilt_deg <= 45:
            raise ConfigError("tilt_deg", "expected 0..45 degrees")
        if not 0 <= self.noise[0] <= self.noise[1] <= 0.5:
            raise ConfigError("noise", "expected 0 ≤ low ≤ high ≤ 0.5")
        if not 0.3 <= self.edge_blur_px[0] <= self.edge_blur_px[1] <= 4:
            raise ConfigError("edge_blur_px", "expected 0.3 ≤ low ≤ high ≤ 4")


def load_phantom_config(path: str | Path | None = None) -> PhantomConfig:
    """Defaults, overridden by the YAML mapping in ``path`` or a preset name of ``configs/phantom/`` (e.g.
    ``downstream``); unknown keys raise ConfigError."""
    from ecgflowcmr.config import from_dict, preset_path, read_yaml

    if path is None:
        return PhantomConfig()
    return from_dict(PhantomConfig, read_yaml(preset_path("phantom", path)))
