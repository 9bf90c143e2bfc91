"""Uncertainty of the indices: stratified bootstrap intervals and a label-permutation p-value.

Each replicate is a multiset of rows of one bounded subsample (at most ``max_points`` rows),
whose exact squared distances are computed once; a replicate's Dunn extremes are read off that
matrix and its other statistics come from :func:`geomprobe.aqi.stats.cluster_stats`, so every
replicate is scored by the same code as the point estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from geomprobe.aqi.indices import DEFAULT_GAMMA, INDEX_NAMES, all_indices, extra_index_names
from geomprobe.aqi.stats import cluster_stats
from geomprobe.aqi.validation import validate_clusters
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.stats import CI_METHODS, percentile_interval, stratified_resamples


@dataclass
class Resampling:
    """Bootstrap percentile intervals and a permutation p-value for AQI (and intervals for each index)."""

    n_bootstrap: int
    n_permutations: int
    ci_level: float
    resample_n: int  # rows used for resampling (all rows unless n > max_points)
    subsampled: bool
    subsample_aqi: float  # AQI on the resampled rows (equals the point estimate unless subsampled)
    ci: dict[str, tuple[float, float]]  # index name -> (low, high)
    ci_method: str
    bootstrap_mean: dict[str, float]  # compare with the estimate: the shift shows the resampling bias
    p_value: float | None
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exact_square_distances(Z: np.ndarray) -> np.ndarray:
    """Full m x m squared distances for a bounded resampling subsample (m <= max_points)."""
    T = torch.from_numpy(Z)
    norms = (T * T).sum(1)
    D = (norms[:, None] + norms[None, :] - 2.0 * (T @ T.T)).clamp_min_(0.0)
    # Entries whose expansion error could exceed 1e-9 relative are recomputed directly.
    bound = (2 * Z.shape[1] + 64) * 2.0**-53 * (norms[:, None] + norms[None, :])
    rows, cols = torch.nonzero(D <= 1e9 * bound, as_tuple=True)
    for s in range(0, len(rows), 16384):
        r, c = rows[s : s + 16384], cols[s : s + 16384]
        D[r, c] = (T.index_select(0, r) - T.index_select(0, c)).square_().sum(1)
    D.fill_diagonal_(0.0)
    return D.numpy()


def replicate_indices(Z: np.ndarray, D: np.ndarray, members: list[np.ndarray], gamma: float) -> dict[str, float]:
    """Indices (the four, AQI and every registered one) of the multiset given by per-cluster row
    indices into Z (duplicates allowed)."""
    stats = cluster_stats([torch.from_numpy(Z[idx]) for idx in members])
    uniq = [np.unique(idx) for idx in members]
    k = len(uniq)
    diameter_sq = np.array([float(D[np.ix_(u, u)].max()) if len(u) > 1 else 0.0 for u in uniq])
    between_sq = np.full((k, k), np.inf)
    for i in range(k):
        for j in range(i + 1, k):
            between_sq[i, j] = between_sq[j, i] = float(D[np.ix_(uniq[i], uniq[j])].min())
    return all_indices(stats.with_extremes(between_sq, diameter_sq), gamma)


def check_resampling_settings(n_bootstrap: int, n_permutations: int, ci_level: float, ci_method: str, max_points: int) -> None:
    """Refuse settings no resampling can run with (one line naming the setting)."""
    if n_bootstrap < 0 or n_permutations < 0:
        raise GeomprobeError("n_bootstrap and n_permutations must be >= 0")
    if not 0 < ci_level < 1:
        raise GeomprobeError(f"ci_level must be between 0 and 1; got {ci_level}")
    if ci_method not in CI_METHODS:
        raise GeomprobeError(f"unknown interval method {ci_method!r}; use {' or '.join(CI_METHODS)}")
    if max_points < 4:
        raise GeomprobeError(f"max_points must be at least 4; got {max_points}")


def resample_indices(
    X: Any,
    labels: Any,
    *,
    n_bootstrap: int = 200,
    n_permutations: int = 200,
    ci_level: float = 0.95,
    max_points: int = 1000,
    gamma: float = DEFAULT_GAMMA,
    ci_method: str = "basic",
    seed: int = 0,
) -> Resampling:
    """Stratified bootstrap intervals for every index and a label-permutation p-value for AQI.

    When n > ``max_points`` a stratified random subsample of ``max_points`` rows is drawn first
    (recorded as ``resample_n``/``subsampled``), because Dunn needs all pairs of each replicate;
    its ``max_points**2`` float64 distance matrix is the only pairwise matrix built. Dunn depends on
    sample size, so compare those intervals with ``subsample_aqi``. Seeded and reproducible.
    p-value: ``(1 + #{permuted AQI >= observed}) / (1 + n_permutations)``.
    """
    check_resampling_settings(n_bootstrap, n_permutations, ci_level, ci_method, max_points)
    X, codes, classes = validate_clusters(X, labels, min_cluster_size=2)
    return resample_rows(
        lambda rows: X[rows],
        codes,
        len(classes),
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        max_points=max_points,
        gamma=gamma,
        ci_method=ci_method,
        seed=seed,
    )


def _centred(Z: np.ndarray) -> np.ndarray:
    # a constant subsample is translated by one of its rows, so it stays exactly constant
    constant = len(Z) <= 1 or bool((Z.max(axis=0) == Z.min(axis=0)).all())
    return Z - (Z[0] if constant else Z.mean(axis=0))


def resample_rows(
    read_rows: Callable[[np.ndarray], Any],
    codes: np.ndarray,
    k: int,
    *,
    n_bootstrap: int,
    n_permutations: int,
    ci_level: float,
    max_points: int,
    gamma: float,
    ci_method: str,
    seed: int,
) -> Resampling:
    """:func:`resample_indices` given ``read_rows(rows) -> activations of those rows`` (rows sorted), so
    a cache too large for memory only ever reads its ``max_points`` subsample. Settings are not checked here."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    rows = np.arange(n)
    subsampled = n > max_points
    if subsampled:
        # Stratified: keep class proportions, at least two rows per class.
        counts = np.bincount(codes, minlength=k)
        take = np.maximum(2, np.floor(counts * max_points / n).astype(int))
        rows = np.sort(
            np.concatenate([rng.choice(np.flatnonzero(codes == i), size=t, replace=False) for i, t in enumerate(take)])
        )
    Z = _centred(np.asarray(read_rows(rows)).astype(np.float64))
    y = codes[rows]
    D = exact_square_distances(Z)
    members = [np.flatnonzero(y == i) for i in range(k)]
    observed = replicate_indices(Z, D, members, gamma)

    names = (*INDEX_NAMES, "aqi", *extra_index_names())  # registered indices get intervals the same way
    boot = {name: np.empty(n_bootstrap) for name in names}
    # the bootstrap's draws come from core.stats (class-stratified) on this function's one Generator,
    # after the subsample and before the permutations; each replicate is scored from the one matrix D
    for r, sample in enumerate(stratified_resamples(members, n_bootstrap, rng)):
        values = replicate_indices(Z, D, sample, gamma)
        for name in names:
            boot[name][r] = values[name]
    nan2 = (math.nan, math.nan)
    ci = {
        name: percentile_interval(boot[name], ci_level, method=ci_method, estimate=observed[name]) if n_bootstrap else nan2
        for name in names
    }
    with np.errstate(invalid="ignore"):
        boot_mean = {name: float(boot[name].mean()) if n_bootstrap else math.nan for name in names}

    p_value = None
    if n_permutations:
        hits = 0
        tol = 1e-12 * max(1.0, abs(observed["aqi"]))
        for _ in range(n_permutations):
            perm = rng.permutation(y)
            values = replicate_indices(Z, D, [np.flatnonzero(perm == i) for i in range(k)], gamma)
            hits += values["aqi"] >= observed["aqi"] - tol
        p_value = (1 + hits) / (1 + n_permutations)
    return Resampling(
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        resample_n=len(rows),
        subsampled=subsampled,
        subsample_aqi=observed["aqi"],
        ci=ci,
        ci_method=ci_method,
        bootstrap_mean=boot_mean,
        p_value=p_value,
        seed=seed,
    )
