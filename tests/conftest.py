"""Shared fixtures: a tiny synthetic store (fast, no phantom) and a small phantom cohort + its store."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from ecgflowcmr.store.prepared import write_store


def synthetic_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A plausible ECG (12, 5000) mV with Gaussian QRS spikes, its phase labels, and a beating-disc cine."""
    n, fs = 5000, 500
    rr = int(fs * 60 / rng.uniform(55, 95))
    first = int(rng.integers(50, rr))
    rpeaks = np.arange(first, n, rr)
    t = np.arange(n)
    beat = np.zeros(n)
    for r in rpeaks:
        beat += np.exp(-0.5 * ((t - r) / 6.0) ** 2) - 0.2 * np.exp(-0.5 * ((t - r - 150) / 30.0) ** 2)
    gains = rng.uniform(0.3, 1.5, size=(12, 1))
    ecg = (gains * beat + 0.02 * rng.standard_normal((12, n))).astype(np.float32)
    phase = np.full(n, np.nan, dtype=np.float32)
    for a, b in itertools.pairwise(rpeaks):
        phase[a:b] = 2 * np.pi * (np.arange(b - a) / (b - a))
    yy, xx = np.mgrid[:96, :96]
    cy, cx = rng.uniform(40, 56, size=2)
    frames = []
    for k in range(50):
        radius = 18 - 6 * np.sin(np.pi * k / 50) ** 2
        frames.append(np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, 0.8, -0.6))
    cine = np.clip(np.stack(frames) + 0.05 * rng.standard_normal((50, 96, 96)), -1, 1).astype(np.float32)
    return ecg, phase, cine


def make_synthetic_store(path: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    sizes = sizes or {"train": 8, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in sizes.items():
        pairs = [synthetic_pair(rng) for _ in range(n)]
        arrays = {"ecg": np.stack([p[0] for p in pairs]), "phase": np.stack([p[1] for p in pairs])}
        if split != "ecg_only":
            arrays["cine"] = np.stack([p[2] for p in pairs])
        splits[split] = arrays
    return write_store(path, splits)


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny complete store (train 8, val 4, test 4, ecg_only 4) of synthetic arrays."""
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_store(root / "store", {"train": 8, "val": 4, "test": 4, "ecg_only": 4})


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom cohort folder (manifest.csv inside), made once per test session."""
    from ecgflowcmr.phantom import make_cohort

    root = tmp_path_factory.mktemp("phantom") / "cohort"
    make_cohort(root, n=24, seed=7)
    return root


@pytest.fixture(scope="session")
def phantom_store(phantom_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom cohort prepared into a store."""
    from ecgflowcmr.store.prepared import prepare

    out = tmp_path_factory.mktemp("phantom_store") / "store"
    prepare(phantom_cohort / "manifest.csv", out)
    return out
