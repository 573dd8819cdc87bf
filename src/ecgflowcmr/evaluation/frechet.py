"""The Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017, FID; Unterthiner et
al. 2018, FVD): ``d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``.

The trace of the matrix square root is computed by eigen-decomposition rather than a general ``sqrtm``
(a Schur decomposition of a 2048² matrix takes the better part of a minute on a CPU):

- from statistics: ``tr (Σ₁Σ₂)^½ = Σ √λᵢ(Σ₁^½ Σ₂ Σ₁^½)`` (symmetric, so ``eigh``/``eigvalsh``);
- from samples with fewer of them than dimensions (the usual case here: 160 frames, 2048-d): with centred
  samples A = X₁/√(n₁−1), B = X₂/√(n₂−1), Σ₁Σ₂ = AᵀA BᵀB has the non-zero eigenvalues of (ABᵀ)(ABᵀ)ᵀ, so
  the trace is the sum of the singular values of the n₁×n₂ matrix ABᵀ — exact and cheap.

The estimate is biased upwards at small N, which is why every Fréchet number we report sits beside a
real-vs-real floor computed at the same N through the same code.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) → mean (D,) and unbiased covariance (D, D), float64; N ≥ 2."""
    x = _samples(features)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _samples(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features (N ≥ 2, D), got shape {x.shape}")
    return x


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁Σ₂)^½ for symmetric positive semi-definite Σ₁, Σ₂: Σ √λ(Σ₁^½ Σ₂ Σ₁^½)."""
    w, v = np.linalg.eigh(sigma1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ₁^½
    middle = root @ sigma2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (the number FID reports)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: μ {mu1.shape} {mu2.shape}, Σ {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(d2, 0.0))


def frechet_between(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets (N_a, D) and (N_b, D) (the sample route when N < D)."""
    a, b = _samples(a), _samples(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    x = (a - mu_a) / np.sqrt(len(a) - 1)
    y = (b - mu_b) / np.sqrt(len(b) - 1)
    trace_root = np.linalg.svd(x @ y.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    d2 = diff @ diff + (x * x).sum() + (y * y).sum() - 2 * trace_root
    return float(max(d2, 0.0))
