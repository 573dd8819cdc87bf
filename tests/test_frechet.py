"""The Fréchet distance against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from ecgflowcmr.evaluation.frechet import feature_stats, frechet_between, frechet_distance


def test_diagonal_gaussians_match_the_closed_form() -> None:
    # d² = |μ1 − μ2|² + Σ_k (σ1_k + σ2_k − 2 √(σ1_k σ2_k)) for diagonal covariances
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_rotated_covariances_and_one_dimension() -> None:
    # Σ2 = c² Σ1 (any Σ1): d² = |Δμ|² + (1 − c)² tr Σ1
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    sigma = a @ a.T + 0.1 * np.eye(4)
    assert frechet_distance(np.zeros(4), sigma, np.ones(4), 9 * sigma) == pytest.approx(4 + 4 * np.trace(sigma))
    # 1-D: (μ1 − μ2)² + (s1 − s2)²
    assert frechet_distance(np.array([2.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == \
        pytest.approx(4 + 1)


def test_samples_converge_and_identical_sets_give_zero() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20000, 3)) * [1, 2, 3]
    y = rng.standard_normal((20000, 3)) * [1, 2, 3] + [0.5, 0, 0]
    assert frechet_between(x, x) == pytest.approx(0, abs=1e-8)
    assert frechet_between(x, y) == pytest.approx(0.25, abs=0.08)
    # fewer samples than dimensions: singular covariances still give a finite number
    assert np.isfinite(frechet_between(rng.standard_normal((5, 16)), rng.standard_normal((6, 16))))


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_both_routes_agree_with_scipy_sqrtm() -> None:
    from scipy import linalg

    rng = np.random.default_rng(4)
    for n_a, n_b, d in ((30, 40, 8), (12, 9, 50)):  # more samples than dimensions, and fewer
        a = rng.standard_normal((n_a, d)) @ rng.standard_normal((d, d))
        b = rng.standard_normal((n_b, d)) + 0.3
        (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
        reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.real(
            np.trace(linalg.sqrtm(s1 @ s2)))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6, abs=1e-6)
        assert frechet_between(a, b) == pytest.approx(reference, rel=1e-6, abs=1e-6)
