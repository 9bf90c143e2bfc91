"""The bootstrap, held once: replicate index draws, percentile intervals, paired and stratified bootstraps, p-values.

Every bootstrap in geomprobe draws its replicate rows here, so a seed means the same draws
everywhere. Replicate r draws, for each stratum in the order given, ``stratum[rng.integers(0, m, m)]``
(m = the stratum's size) from ``numpy.random.default_rng(seed)`` or the Generator passed; with one
stratum of all rows that is ``rng.integers(0, n, n)``. (numpy's ``rng.choice(g, len(g))`` makes the same
draws, so intervals written with it before this module existed reproduce draw for draw.) A
statistic sees row indices (duplicates allowed), so one code path serves refusal rates, AUROC and AQI.

Intervals are percentiles of the replicates with numpy's default (linear) quantile; ``basic`` reflects
them about the estimate. ``method="BCa"`` hands the resampling to :func:`scipy.stats.bootstrap` (its own
draws, so not comparable draw for draw). Layer 0: numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from geomprobe.core.errors import GeomprobeError

Seed = int | np.random.Generator | None
Strata = int | Sequence[np.ndarray]  # n (one stratum of all rows) or the row indices of each stratum
CI_METHODS = ("percentile", "basic")


def as_generator(seed: Seed) -> np.random.Generator:
    """The Generator itself, or ``numpy.random.default_rng(seed)``."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def strata_from_labels(labels: Any) -> list[np.ndarray]:
    """Row indices of each class, classes in ``numpy.unique`` order."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _strata(strata: Strata) -> list[np.ndarray]:
    if isinstance(strata, (int, np.integer)):
        if strata < 1:
            raise GeomprobeError(f"the bootstrap needs at least one row; got {strata}")
        return [np.arange(int(strata))]
    out = [np.asarray(s, dtype=np.int64).reshape(-1) for s in strata]
    if not out or not sum(map(len, out)):
        raise GeomprobeError("the bootstrap needs at least one row; every stratum is empty")
    return out


def check_settings(n_bootstrap: int, level: float, *, min_bootstrap: int = 1) -> None:
    """Refuse a replicate count or interval level no bootstrap can run with (one line naming it)."""
    if n_bootstrap < min_bootstrap:
        raise GeomprobeError(f"n_bootstrap must be >= {min_bootstrap}; got {n_bootstrap}")
    if not 0 < level < 1:
        raise GeomprobeError(f"the interval level must be between 0 and 1 (e.g. 0.95); got {level}")


def stratified_resamples(strata: Strata, n_bootstrap: int, seed: Seed = 0) -> Iterator[list[np.ndarray]]:
    """Per replicate, each stratum's resampled row indices (with replacement, to the stratum's own size).

    Draws lazily from one Generator, so a caller that passes its own Generator can draw before and after.
    """
    rng, groups = as_generator(seed), _strata(strata)
    for _ in range(n_bootstrap):
        # an empty stratum draws nothing (as rng.choice(empty, 0) did)
        yield [g[rng.integers(0, len(g), len(g))] if len(g) else g for g in groups]


def bootstrap_indices(strata: Strata, n_bootstrap: int, seed: Seed = 0) -> Iterator[np.ndarray]:
    """Per replicate, the resampled rows of all strata concatenated (stratum order kept)."""
    for parts in stratified_resamples(strata, n_bootstrap, seed):
        yield np.concatenate(parts)


def index_matrix(n: int, n_bootstrap: int, seed: Seed = 0) -> np.ndarray:
    """``(n_bootstrap, n)`` rows of one unstratified bootstrap in one call: the same draws as
    :func:`bootstrap_indices` with ``strata=n`` (numpy fills the matrix row by row from the same stream)."""
    if n < 1:
        raise GeomprobeError(f"the bootstrap needs at least one row; got {n}")
    return as_generator(seed).integers(0, n, size=(n_bootstrap, n))


def percentile_interval(
    replicates: Any,
    level: float = 0.95,
    *,
    method: str = "percentile",
    estimate: Any = None,
    axis: int = 0,
    nonfinite: Literal["inverted_cdf", "drop"] = "inverted_cdf",
) -> tuple[Any, Any]:
    """``(low, high)`` at ``level`` from bootstrap replicates (floats, or arrays for a vector statistic).

    ``percentile``: the replicates' (1 - level)/2 and (1 + level)/2 quantiles, numpy's linear rule.
    ``basic``: ``2 * estimate - (high, low)`` (reverse percentile; removes the first-order bias), NaN when
    the estimate or a replicate is not finite. Non-finite replicates (a Dunn index of inf): with
    ``inverted_cdf`` the quantiles of that statistic (column) switch to numpy's ``inverted_cdf`` rule, which
    returns replicate values instead of interpolating towards inf; with ``drop`` they are left out (1-D
    only; NaN if none is left). Replicates run along ``axis``.
    """
    if method not in CI_METHODS:
        raise GeomprobeError(f"unknown interval method {method!r}; use {' or '.join(CI_METHODS)}")
    values = np.asarray(replicates, dtype=np.float64)
    if nonfinite == "drop":
        values = values[np.isfinite(values)]
        if not len(values):
            return math.nan, math.nan
    # (1 + level) / 2 equals 1 - (1 - level) / 2 bit for bit for every level >= 0.5 (checked), so
    # intervals written with either form reproduce exactly.
    probs = [(1 - level) / 2, (1 + level) / 2]
    ok = np.isfinite(values).all(axis=axis)  # per column of a vector statistic
    q = np.quantile(values, probs, axis=axis)
    if not np.all(ok):
        q = np.where(ok, q, np.quantile(values, probs, axis=axis, method="inverted_cdf"))
    if method == "basic":
        est = np.asarray(estimate if estimate is not None else np.nan, dtype=np.float64)
        q = np.where(ok & np.isfinite(est), 2 * est - q[::-1], np.nan)
    return (float(q[0]), float(q[1])) if q.ndim == 1 else (q[0], q[1])


def bootstrap_p_value(replicates: Any, null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of ``statistic == null`` from replicate values (e.g. paired changes):
    ``min(1, 2 (1 + min(#{r <= null}, #{r >= null})) / (1 + B))`` over the B finite replicates."""
    values = np.asarray(replicates, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    tail = min(int((values <= null).sum()), int((values >= null).sum()))
    return min(1.0, 2.0 * (1 + tail) / (1 + len(values)))


@dataclass(frozen=True)
class BootstrapResult:
    """A statistic on all rows and its bootstrap interval (floats, or arrays for a vector statistic)."""

    estimate: Any
    low: Any
    high: Any
    replicates: np.ndarray  # (n_bootstrap, ...) statistic on each replicate; empty for BCa (scipy keeps them)
    level: float
    method: str

    @property
    def interval(self) -> tuple[Any, Any]:
        return self.low, self.high


def bootstrap(
    statistic: Callable[[np.ndarray], Any],
    strata: Strata,
    *,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    method: Literal["percentile", "basic", "BCa"] = "percentile",
    seed: Seed = 0,
) -> BootstrapResult:
    """Interval of ``statistic(rows)``, resampling rows with replacement within each stratum.

    ``strata``: n for a plain bootstrap of n rows, or the row indices of each stratum (e.g. each class,
    so every replicate keeps both classes, as AUROC needs). The estimate is ``statistic`` on all strata's
    rows in index order. ``BCa`` (bias-corrected and accelerated) runs :func:`scipy.stats.bootstrap` with
    each stratum as a separate sample (resampled independently, as here) and a scalar statistic.
    """
    check_settings(n_bootstrap, level)
    groups = _strata(strata)
    estimate = statistic(np.sort(np.concatenate(groups)))
    if method == "BCa":
        return _scipy_bca(statistic, groups, estimate, n_bootstrap, level, seed)
    replicates = np.array([statistic(rows) for rows in bootstrap_indices(groups, n_bootstrap, seed)], dtype=np.float64)
    low, high = percentile_interval(replicates, level, method=method, estimate=estimate)
    return BootstrapResult(estimate, low, high, replicates, level, method)


def _scipy_bca(
    statistic: Callable[[np.ndarray], Any], groups: list[np.ndarray], estimate: Any, n_bootstrap: int, level: float, seed: Seed
) -> BootstrapResult:
    from scipy.stats import bootstrap as scipy_bootstrap

    if len(groups) > 1 and any(len(g) < 2 for g in groups):
        raise GeomprobeError("BCa needs at least two rows in every stratum (its jackknife leaves one out)")
    res = scipy_bootstrap(
        tuple(groups),
        lambda *parts: statistic(np.concatenate(parts)),
        n_resamples=n_bootstrap,
        confidence_level=level,
        method="BCa",
        vectorized=False,
        rng=as_generator(seed),
    )
    low, high = res.confidence_interval
    return BootstrapResult(estimate, float(low), float(high), np.empty(0), level, "BCa")


@dataclass(frozen=True)
class PairedBootstrap:
    """A statistic on arms a and b over the same rows, b - a, and its paired-bootstrap interval and p-value.

    ``a``/``b``/``delta`` are on all rows (index order); ``low``/``high``/``p_value`` are NaN when no
    replicate gave a finite change.
    """

    a: float
    b: float
    delta: float
    low: float
    high: float
    p_value: float
    replicates: np.ndarray  # the finite replicate changes b* - a*
    n: int  # rows resampled
    level: float


def paired_bootstrap(
    statistic: Callable[[np.ndarray], tuple[float, float]],
    strata: Strata,
    *,
    n_bootstrap: int,
    level: float = 0.95,
    seed: Seed = 0,
) -> PairedBootstrap:
    """``statistic(rows) -> (value on a, value on b)``; every replicate uses the same rows for both arms.

    That keeps the row-to-row variation common to both arms out of the interval of the change.
    Percentile interval and :func:`bootstrap_p_value` of the finite replicate changes; ``n_bootstrap=0``
    gives the change alone (NaN interval and p-value), as the audit's delta section always allowed.
    """
    check_settings(n_bootstrap, level, min_bootstrap=0)
    groups = _strata(strata)
    a, b = statistic(np.sort(np.concatenate(groups)))
    deltas = np.array(
        [np.subtract(*statistic(rows)[::-1]) for rows in bootstrap_indices(groups, n_bootstrap, seed)], dtype=np.float64
    )
    deltas = deltas[np.isfinite(deltas)]
    n = sum(map(len, groups))
    if not len(deltas):
        return PairedBootstrap(float(a), float(b), float(b - a), math.nan, math.nan, math.nan, deltas, n, level)
    low, high = percentile_interval(deltas, level)
    return PairedBootstrap(float(a), float(b), float(b - a), low, high, bootstrap_p_value(deltas), deltas, n, level)
