"""AUROC within each instruction condition beside the pooled AUROC, with bootstrap intervals.

On a set where one instruction makes false answers common (a lie-pressure prompt), a probe that
only reads the instruction scores well when rows are pooled. Within one condition the instruction
is the same for every row, so there AUROC measures whether the probe separates the model's true
answers from its false ones. ``instruction AUROC`` (lie-pressure rows vs neutral rows, grade
ignored) shows how strongly the probe reads the instruction itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.activations.store import CacheFile, open_cache
from geomprobe.core import stats
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer
from geomprobe.probes import metrics as M
from geomprobe.probes.pipeline import ProbeResult

POOLED = "pooled"
CONDITION_KEY = "condition"


def row_conditions(cache: CacheFile, rows: np.ndarray | None = None, key: str = CONDITION_KEY) -> np.ndarray | None:
    """The ``key`` field of each row's dataset source (``""`` where missing); None if no row has it."""
    sources = cache.sources
    values = np.array([str(s.get(key, "")) if isinstance(s, dict) else "" for s in sources], dtype=object)
    if not any(values):
        return None
    return values if rows is None else values[np.asarray(rows, dtype=np.int64)]


def check_condition_grades(cache: CacheFile, key: str = CONDITION_KEY) -> None:
    """If the cache's rows carry a condition, at least one condition must hold two labelled classes."""
    conditions = row_conditions(cache, key=key)
    if conditions is None:
        return
    labels = cache.labels
    names = sorted({c for c in conditions if c})
    if not any(len(set(labels[(conditions == c) & (labels >= 0)].tolist())) > 1 for c in names):
        found = ", ".join(
            f"{c}: {sorted({cache.label_names[v] for v in labels[(conditions == c) & (labels >= 0)]})}" for c in names
        )
        raise GeomprobeError(
            f"no condition in {cache.path.name} has both grades ({found}); "
            "within-condition AUROC needs true and false answers under one instruction"
        )


def bootstrap_auroc(
    scores: np.ndarray, y: np.ndarray, *, n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of AUROC per layer for ``scores`` (L, N), resampling each class with replacement."""
    if not 0 < ci < 1:
        raise GeomprobeError(f"ci must be between 0 and 1 (e.g. 0.95); got {ci}")
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(y).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if n_bootstrap < 1 or len(pos) == 0 or len(neg) == 0:
        nan = np.full(scores.shape[0], np.nan)
        return nan, nan.copy()
    # Resampling within each class keeps both classes in every draw (stratified bootstrap); positives first.
    res = stats.bootstrap(
        lambda rows: M.auroc(scores[:, rows], y[rows]), [pos, neg], n_bootstrap=n_bootstrap, level=ci, seed=seed
    )
    return res.low, res.high


def _layer(hook: str) -> int:
    try:
        return hook_layer(hook)
    except GeomprobeError:
        return -1


def _group_record(
    hook: str, layer: int, condition: str, s: np.ndarray, y: np.ndarray, threshold: float, low: float, high: float
) -> dict[str, Any]:
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ok = n_pos > 0 and n_neg > 0
    return {
        "hook": hook,
        "layer": layer,
        "condition": condition,
        "n_positive": n_pos,
        "n_negative": n_neg,
        "computable": ok,
        "auroc": float(M.auroc(s, y)) if ok else None,
        "auroc_ci_low": float(low) if ok else None,
        "auroc_ci_high": float(high) if ok else None,
        "recall_at_fpr": float(M.recall_at_threshold(s, y, threshold)) if n_pos and np.isfinite(threshold) else None,
        "negative_fpr_at_threshold": float((s[~y] > threshold).mean()) if n_neg and np.isfinite(threshold) else None,
    }


def condition_metrics(
    hooks: Sequence[str],
    scores: np.ndarray,
    y: np.ndarray,
    conditions: Sequence[str] | np.ndarray,
    *,
    thresholds: Sequence[float] | np.ndarray | None = None,
    pressure: str | None = None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per hook: pooled and per-condition AUROC with bootstrap intervals and counts.

    ``scores`` (L, N) and ``y`` (N,, 1 = positive) are one evaluation's rows, ``conditions`` (N,)
    their instruction condition. A condition with one class only is kept with ``computable: False``;
    if no condition has both classes, that is an error. ``thresholds`` (one per hook, e.g. from
    control data) give recall and the negatives' false-positive rate per condition. With
    ``pressure`` (the lie-pressure condition's name), ``instruction_auroc`` scores pressure rows
    against all others, grade ignored.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = np.asarray(y).astype(bool)
    condition_of = np.asarray(conditions, dtype=object)
    if scores.shape != (len(hooks), len(y)) or len(condition_of) != len(y):
        raise GeomprobeError(f"scores {scores.shape}, {len(y)} labels and {len(condition_of)} conditions do not line up")
    names = sorted({str(c) for c in condition_of if c})
    unlabelled = int(sum(1 for c in condition_of if not c))
    if not names:
        raise GeomprobeError("no row carries a condition; build the set with geomprobe probe deception-set")
    both = [c for c in names if y[condition_of == c].any() and (~y[condition_of == c]).any()]
    if not both:
        counts = ", ".join(
            f"{c}: {int(y[condition_of == c].sum())} positive / {int((~y[condition_of == c]).sum())} negative" for c in names
        )
        raise GeomprobeError(
            f"no condition has both grades ({counts}); within-condition AUROC needs true and false answers under one instruction"
        )
    limits = np.full(len(hooks), np.nan) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    groups = [(POOLED, np.ones(len(y), bool))] + [(c, condition_of == c) for c in names]
    intervals = {}
    for k, (name, mask) in enumerate(groups):
        intervals[name] = bootstrap_auroc(scores[:, mask], y[mask], n_bootstrap=n_bootstrap, ci=ci, seed=seed + k)
    per_condition, instruction = [], []
    for i, hook in enumerate(hooks):
        layer = _layer(hook)
        for name, mask in groups:
            low, high = intervals[name][0][i], intervals[name][1][i]
            per_condition.append(_group_record(hook, layer, name, scores[i, mask], y[mask], limits[i], low, high))
    if pressure is not None and pressure in names and len(names) > 1:
        is_pressure = condition_of == pressure
        low, high = bootstrap_auroc(scores, np.asarray(is_pressure), n_bootstrap=n_bootstrap, ci=ci, seed=seed + len(groups))
        aucs = np.atleast_1d(M.auroc(scores, np.asarray(is_pressure)))
        instruction = [
            {
                "hook": h,
                "layer": _layer(h),
                "auroc": float(aucs[i]),
                "auroc_ci_low": float(low[i]),
                "auroc_ci_high": float(high[i]),
                "positive": pressure,
            }
            for i, h in enumerate(hooks)
        ]
    return {
        "conditions": names,
        "computable": both,
        "rows_without_condition": unlabelled,
        "ci": ci,
        "n_bootstrap": n_bootstrap,
        "per_condition": per_condition,
        "instruction_auroc": instruction,
    }


def best_by_condition(report: dict[str, Any], condition: str) -> dict[str, Any] | None:
    """The record with the highest AUROC for ``condition`` (None when not computable)."""
    rows = [r for r in report["per_condition"] if r["condition"] == condition and r["auroc"] is not None]
    return max(rows, key=lambda r: r["auroc"]) if rows else None


def result_condition_metrics(result: ProbeResult, cache: str | Path | CacheFile, **kwargs: Any) -> dict[str, Any] | None:
    """:func:`condition_metrics` for an :func:`evaluate_probes` result on ``cache`` (None if its rows
    carry no condition). The recall threshold per hook is the one the evaluation used."""
    handle = cache if isinstance(cache, CacheFile) else open_cache(cache)
    try:
        conditions = row_conditions(handle, result.rows)
    finally:
        if handle is not cache:
            handle.close()
    if conditions is None:
        return None
    hooks = [r["hook"] for r in result.records]
    scores = np.stack([result.scores[h] for h in hooks])
    kwargs.setdefault("thresholds", [r["threshold"] for r in result.records])
    if result.y is None:
        return None
    return condition_metrics(hooks, scores, result.y, conditions, **kwargs)
