"""The Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017, FID; Unterthiner et
al. 2018, FVD): ``d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``.

The matrix square root is ``scipy.linalg.sqrtm``; a near-singular product (fewer samples than feature
dimensions) gets ``eps`` added to both diagonals, as the reference implementations do. The estimate is
biased upwards at small N, which is why every Fréchet number we report sits beside a real-vs-real floor
computed at the same N through the same code.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) → mean (D,) and unbiased covariance (D, D), float64; N ≥ 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features (N ≥ 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Squared Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (the number FID reports)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: μ {mu1.shape} {mu2.shape}, Σ {sigma1.shape} {sigma2.shape}")
    with warnings.catch_warnings():  # singular products (N < D) are expected; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)  # rounding leaves a tiny imaginary part
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean), 0.0))


def frechet_between(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))
