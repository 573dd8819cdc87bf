"""The instrument's reading of a cine and its scores: chamber measures from the segmenter's areas, the
features its classifiers use, and the agreement, regression, classification, realism and identification
scores (``evaluation.instrument`` puts them together on real and generated cines of held-out subjects).

Measures (per cine, from the segmenter's per-frame chamber areas in mm², canonical 1.8 mm pixels; the
area–time curves are circularly smoothed [1, 2, 1]/4 first). Four-chamber areas are proxies for the
short-axis volumes of the paper:

- ``lv_ed_area_mm2`` / ``lv_es_area_mm2``: largest / smallest LV blood-pool area over the cycle;
- ``lv_fac``: LV fractional area change (ED − ES) / ED;
- ``lv_myo_area_mm2``: LV myocardium area, mean over frames;
- ``rv_fac``: RV fractional area change;
- ``es_frame``: end-systolic frame (sub-frame): the peak of the contraction curve max(A_LV) − A_LV(t),
  centre of its run ≥ 0.95·max (``signal.phase.peak_centre``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecgflowcmr.canonical import N_FRAMES
from ecgflowcmr.evaluation.quality import chunk_mean
from ecgflowcmr.evaluation.segmentation import Segmenter
from ecgflowcmr.evaluation.sharding import StoreRows, shard_map
from ecgflowcmr.signal.phase import PEAK_LEVEL, peak_centre, smooth_circular

LV, MYO, RV = 0, 1, 2  # indices into the areas' last axis
MEASURES: dict[str, str] = {
    "lv_fac": "LV fractional area change (max − min of the LV blood-pool area) / max",
    "lv_ed_area_mm2": "end-diastolic LV blood-pool area (largest over the cycle), mm²",
    "lv_es_area_mm2": "end-systolic LV blood-pool area (smallest over the cycle), mm²",
    "lv_myo_area_mm2": "LV myocardium area, mean over the 50 frames, mm²",
    "rv_fac": "RV fractional area change (max − min of the RV blood-pool area) / max",
    "es_frame": f"end-systolic frame: centre of the run ≥ {PEAK_LEVEL:g}·max around the peak of "
                "max(A_LV) − A_LV(t) (frame 0 = R-peak)",
}
CURVE_DEFINITION = ("the contraction curve max(A_LV) − A_LV(t) of the segmenter's LV blood-pool area, circularly "
                    "smoothed [1,2,1]/4")


# --------------------------------------------------------------------------------------------------
# Reading cines: areas → measures, features
# --------------------------------------------------------------------------------------------------


def contraction_curve(areas: np.ndarray) -> np.ndarray:
    """areas (N, T, 5) mm² → (N, T): max(A_LV) − A_LV(t) of the smoothed LV pool area; its peak is ES."""
    lv = smooth_circular(areas[..., LV])
    return lv.max(axis=1, keepdims=True) - lv


def chamber_measures(areas: np.ndarray) -> dict[str, np.ndarray]:
    """areas (N, T, 5) mm² (classes 1–5) → each of ``MEASURES`` as (N,) float64."""
    a = smooth_circular(np.asarray(areas, dtype=np.float64))
    lv, rv = a[..., LV], a[..., RV]
    lv_ed, lv_es = lv.max(axis=1), lv.min(axis=1)
    rv_ed = rv.max(axis=1)
    return {
        "lv_fac": np.where(lv_ed > 0, (lv_ed - lv_es) / np.maximum(lv_ed, 1e-9), 0.0),
        "lv_ed_area_mm2": lv_ed,
        "lv_es_area_mm2": lv_es,
        "lv_myo_area_mm2": a[..., MYO].mean(axis=1),
        "rv_fac": np.where(rv_ed > 0, (rv_ed - rv.min(axis=1)) / np.maximum(rv_ed, 1e-9), 0.0),
        "es_frame": peak_centre(contraction_curve(areas)),
    }


@dataclass
class Readout:
    """What the segmenter reads from N cines: areas (N, T, 5) mm², frame features (N, T, F), measures."""

    areas: np.ndarray
    frame_features: np.ndarray
    measures: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.measures = chamber_measures(self.areas)

    def take(self, index: np.ndarray) -> Readout:
        return Readout(self.areas[index], self.frame_features[index])

    def video_features(self) -> np.ndarray:
        """(N, 2F): frame features' mean and standard deviation over time (``fvd_cmr``'s feature)."""
        f = self.frame_features
        return np.concatenate([f.mean(axis=1), f.std(axis=1)], axis=1)

    def classifier_features(self) -> np.ndarray:
        """(N, 2F + 16): video features, log ED and ES area of each chamber, the six measures."""
        a = smooth_circular(self.areas)
        logs = np.log1p(np.concatenate([a.max(axis=1), a.min(axis=1)], axis=1))
        measures = np.stack([self.measures[m] for m in MEASURES], axis=1)
        return np.concatenate([self.video_features(), logs, measures], axis=1)


def read_cines(segmenter: Segmenter, cines01: np.ndarray | StoreRows) -> Readout | None:
    """Cines (N, T, H, W) in [0, 1] → :class:`Readout` on rank 0, None on the other ranks (sharded under
    torchrun: each rank reads only its block)."""
    _, readout = produce_and_read(segmenter, lambda x: x, cines01, keep=False)
    return readout


def produce_and_read(segmenter: Segmenter, produce: Callable[..., np.ndarray], *inputs: Any, align: int = 1,
                     keep: bool = True, seconds: list[float] | None = None
                     ) -> tuple[np.ndarray | None, Readout | None]:
    """``produce(*inputs)`` → cines (N, T, H, W) in [0, 1], read by the segmenter in the same pass: (the cines
    when ``keep``, else None; their :class:`Readout`) on rank 0, (None, None) on the other ranks. Under torchrun
    each rank produces and reads only its block of whole ``align``-item batches (``shard_map``) and sends the
    result to rank 0; ``seconds[0]`` adds up this rank's time in the segmenter."""
    frames = segmenter.BATCH_FRAMES
    align = math.lcm(align, frames // math.gcd(N_FRAMES, frames))  # the segmenter's frame batches align too

    def work(*parts: np.ndarray) -> tuple[np.ndarray, ...]:
        cines = produce(*parts)
        start = time.perf_counter()
        areas, feats = segmenter.analyse(cines)
        if seconds is not None:
            seconds[0] += time.perf_counter() - start
        return (cines, areas, feats) if keep else (areas, feats)

    out = shard_map(work, *inputs, align=align)
    if out is None:
        return None, None
    return (out[0] if keep else None), Readout(*out[-2:])


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def agreement(pred: np.ndarray, real: np.ndarray) -> dict[str, float | None]:
    """Spearman ρ (None when either side is constant), R² of pred as a prediction of real (no refit), MAE."""
    from scipy.stats import spearmanr

    pred, real = np.asarray(pred, dtype=np.float64), np.asarray(real, dtype=np.float64)
    rho = None
    if np.ptp(pred) > 0 and np.ptp(real) > 0:
        rho = float(spearmanr(pred, real).statistic)
    ss_tot = float(((real - real.mean()) ** 2).sum())
    r2 = 1 - float(((pred - real) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    return {"spearman": rho, "r2": r2, "mae": float(np.abs(pred - real).mean())}


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Standardised features → RidgeCV (α on a log grid, leave-one-out on train) → predictions for x_test."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))
    return model.fit(x_train, y_train).predict(x_test)


def classifier(x_train: np.ndarray, y_train: np.ndarray):
    """Standardised features → balanced logistic regression (C = 0.1): the instrument's one recipe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000))
    return model.fit(x_train, y_train)


def balanced_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (predictions of other classes count as errors)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected on small test sets
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, model.predict(x)))


def real_vs_generated_auc(real: np.ndarray, generated: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """ROC AUC of the instrument's classifier telling real from generated cine features, out of fold
    (stratified k-fold): 0.5 = indistinguishable, 1 = always told apart (the machine's Turing test)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.concatenate([real, generated])
    y = np.r_[np.zeros(len(real)), np.ones(len(generated))]
    folds = max(2, min(folds, len(real), len(generated)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    score = cross_val_predict(classifier(x, y), x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, score))


def sharpness(cines01: np.ndarray) -> float:
    """Mean in-plane gradient magnitude |∇x| (forward differences, [0, 1] per pixel) over all frames."""
    def per_item(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        gy, gx = np.diff(x, axis=-2)[..., :, :-1], np.diff(x, axis=-1)[..., :-1, :]
        return np.sqrt(gy**2 + gx**2).reshape(len(x), -1).mean(1)  # (items,)

    return chunk_mean(per_item, cines01)


def identification(generated: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> float:
    """Mean over subjects of the fraction of other subjects' real cines farther (in standardised measure
    space) from subject i's generated cine than its own real cine: 0.5 = chance, 1 = always nearest its own."""
    g = np.stack([generated[m] for m in MEASURES], axis=1)
    r = np.stack([real[m] for m in MEASURES], axis=1)
    scale = r.std(axis=0)
    scale[scale == 0] = 1
    d = np.linalg.norm((g[:, None] - r[None]) / scale, axis=2)  # (N gen, N real)
    own = np.diag(d)
    n = len(d)
    farther = (d > own[:, None]).sum(axis=1) + 0.5 * ((d == own[:, None]).sum(axis=1) - 1)
    return float((farther / (n - 1)).mean())
