"""Scores of one test fold, and their summaries over folds (mean ± sd, paired differences with 95 % CI)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: int) -> list[dict[str, Any]]:
    """accuracy, balanced accuracy and AUC (binary; macro one-vs-rest over the classes present for more
    than two) of probabilities (N, C) against labels (N,)."""
    pred = probs.argmax(1)
    accuracy = float((pred == labels).mean())
    recalls = [float((pred[labels == c] == c).mean()) for c in range(classes) if (labels == c).any()]
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in range(classes)
            if 0 < (labels == c).sum() < len(labels)]
    if classes == 2:
        aucs = aucs[1:] if len(aucs) == 2 else aucs  # the positive class's AUC (both are the same number)
    return [{"metric": "accuracy", "value": accuracy},
            {"metric": "balanced_accuracy", "value": float(np.mean(recalls))},
            {"metric": "auc", "value": float(np.mean(aucs)) if aucs else math.nan}]


def regression_metrics(truth: np.ndarray, pred: np.ndarray, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Per phenotype: MAE in its physical unit and R² = 1 − SSE/SST over the test subjects that have it;
    then ``mean_r2`` over phenotypes (the paper's "Overall R²")."""
    rows, r2s = [], []
    for k, column in enumerate(columns):
        known = np.isfinite(truth[:, k])
        y, p = truth[known, k], pred[known, k]
        if len(y) < 2:
            continue
        sst = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float(((y - p) ** 2).sum()) / sst if sst > 0 else math.nan
        rows.append({"metric": f"mae:{column}", "value": float(np.abs(y - p).mean())})
        rows.append({"metric": f"r2:{column}", "value": r2})
        r2s.append(r2)
    rows.append({"metric": "mean_r2", "value": float(np.nanmean(r2s)) if r2s else math.nan})
    return rows


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof 1; NaN for one value) over folds."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of the per-fold differences a − b, their SD, the 95 % t interval (paired over the same folds)
    and ``detectable``: the smallest true difference these folds would declare with 80 % power at this
    spread, (t₀.₉₇₅ + t₀.₈₀) · sd / √folds (a two-sided paired t-test; the interval's half-width is the
    smallest that can be declared at all)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return {"diff": mean, "low": math.nan, "high": math.nan, "sd": math.nan, "detectable": math.nan,
                "folds": len(d)}
    sd, df = float(d.std(ddof=1)), len(d) - 1
    half = float(stats.t.ppf(0.975, df) * sd / math.sqrt(len(d)))
    detectable = float((stats.t.ppf(0.975, df) + stats.t.ppf(0.80, df)) * sd / math.sqrt(len(d)))
    return {"diff": mean, "low": mean - half, "high": mean + half, "sd": sd, "detectable": detectable,
            "folds": len(d)}
