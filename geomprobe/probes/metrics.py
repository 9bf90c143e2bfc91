"""Probe metrics, vectorised over layers: scores are ``(N,)`` or ``(L, N)`` arrays, float64.

Recall at a false-positive rate follows the deception-probe practice: the threshold is the
``1 - fpr`` quantile of scores on a *control* set of ordinary requests, and recall is the
fraction of positive (deceptive) evaluation rows scoring strictly above it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata

from geomprobe.core.errors import GeomprobeError


def _as_2d(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    scores = np.asarray(scores, dtype=np.float64)
    return (scores[None], True) if scores.ndim == 1 else (scores, False)


def _check(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != scores.shape[-1]:
        raise GeomprobeError(f"{y.shape[0] if y.ndim else 0} labels for {scores.shape[-1]} scores")
    if not np.all(np.isfinite(scores)):
        raise GeomprobeError("probe scores contain NaN or inf; check the activations for non-finite values")
    return y.astype(bool)


def auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray | float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN if one class is absent."""
    s, single = _as_2d(scores)
    pos = _check(s, y)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        out = np.full(s.shape[0], np.nan)
    else:
        ranks = rankdata(s, axis=1)
        out = (ranks[:, pos].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return float(out[0]) if single else out


def accuracy(scores: np.ndarray, y: np.ndarray, threshold: float | np.ndarray = 0.0) -> np.ndarray | float:
    s, single = _as_2d(scores)
    pos = _check(s, y)
    pred = s > np.asarray(threshold, dtype=np.float64).reshape(-1, 1)
    out = (pred == pos).mean(1)
    return float(out[0]) if single else out


def balanced_accuracy(scores: np.ndarray, y: np.ndarray, threshold: float | np.ndarray = 0.0) -> np.ndarray | float:
    s, single = _as_2d(scores)
    pos = _check(s, y)
    pred = s > np.asarray(threshold, dtype=np.float64).reshape(-1, 1)
    tpr = pred[:, pos].mean(1) if pos.any() else np.full(s.shape[0], np.nan)
    tnr = (~pred[:, ~pos]).mean(1) if (~pos).any() else np.full(s.shape[0], np.nan)
    out = (tpr + tnr) / 2
    return float(out[0]) if single else out


def control_threshold(control_scores: np.ndarray, fpr: float = 0.01) -> np.ndarray | float:
    """Score above which only ``fpr`` of the control rows lie (the ``1 - fpr`` quantile)."""
    if not 0 < fpr < 1:
        raise GeomprobeError(f"fpr must be between 0 and 1 (e.g. 0.01); got {fpr}")
    s, single = _as_2d(control_scores)
    if s.shape[1] == 0:
        raise GeomprobeError("the control set is empty; pass a control cache with rows")
    if not np.all(np.isfinite(s)):
        raise GeomprobeError("control scores contain NaN or inf; check the control cache")
    out = np.quantile(s, 1.0 - fpr, axis=1)
    return float(out[0]) if single else out


def recall_at_threshold(scores: np.ndarray, y: np.ndarray, threshold: float | np.ndarray) -> np.ndarray | float:
    s, single = _as_2d(scores)
    pos = _check(s, y)
    if not pos.any():
        out = np.full(s.shape[0], np.nan)
    else:
        out = (s[:, pos] > np.asarray(threshold, dtype=np.float64).reshape(-1, 1)).mean(1)
    return float(out[0]) if single else out


def calibration_error(scores: np.ndarray, y: np.ndarray, n_bins: int = 10) -> np.ndarray | float:
    """Expected calibration error of ``sigmoid(score)`` with equal-width probability bins."""
    s, single = _as_2d(scores)
    pos = _check(s, y).astype(np.float64)
    prob = expit(s)
    bins = np.clip((prob * n_bins).astype(np.int64), 0, n_bins - 1)
    n = s.shape[1]
    out = np.zeros(s.shape[0])
    for b in range(n_bins):
        member = bins == b  # (L, N)
        count = member.sum(1)
        conf = np.where(count > 0, (prob * member).sum(1) / np.maximum(count, 1), 0.0)
        freq = np.where(count > 0, (pos * member).sum(1) / np.maximum(count, 1), 0.0)
        out += count / n * np.abs(conf - freq)
    return float(out[0]) if single else out
