"""AQI over caches larger than memory (see :mod:`geomprobe.activations.blocks`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geomprobe.activations.blocks import block_rows_for, iter_row_blocks
from geomprobe.activations.store import CacheFile
from geomprobe.core.errors import GeomprobeError


def streamed_cluster_report(
    cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, labels: Sequence[int], *,
    gamma: float = 0.5, device: Any = "auto", block_rows: int | None = None,
):
    """:func:`geomprobe.aqi.cluster_report` of ``cache``'s ``rows`` at ``hook``, read in blocks."""
    from geomprobe.aqi import ClusterReport, _combine, _device, _encode_labels, _PairSearch, _Parts

    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    codes, classes = _encode_labels(labels, len(rows))
    codes = codes[order]
    k = len(classes)
    counts = np.bincount(codes, minlength=k)
    if k < 2:
        raise GeomprobeError(f"need two or more clusters; all {len(rows)} rows have one label")
    if counts.max() < 2:
        raise GeomprobeError("every cluster has a single point, so Calinski-Harabasz and Dunn are undefined")
    d = cache.d_model
    block_rows = block_rows or block_rows_for(d)

    # Pass 1: per-class sums (global mean and centroids); per-class min/max to spot constant clusters.
    sums = np.zeros((k, d))
    lo = np.full((k, d), np.inf)
    hi = np.full((k, d), -np.inf)
    for pos, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
        c = codes[pos]
        X64 = X.astype(np.float64)
        for i in range(k):
            part = X64[c == i]
            if len(part):
                sums[i] += part.sum(0)
                lo[i] = np.minimum(lo[i], part.min(0))
                hi[i] = np.maximum(hi[i], part.max(0))
    mu = sums.sum(0) / len(rows)
    centroids = sums / counts[:, None] - mu
    constant = (lo == hi).all(1)

    # Pass 2: scatter about each centroid and mean distance to it.
    ssw = np.zeros(k)
    dist = np.zeros(k)
    for pos, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
        c = codes[pos]
        T = torch.from_numpy(X).to(torch.float64).sub_(torch.from_numpy(mu))
        for i in range(k):
            sq = (T[torch.from_numpy(c == i)] - torch.from_numpy(centroids[i])).square_().sum(1)
            ssw[i] += float(sq.sum())
            dist[i] += float(sq.sqrt_().sum())
    for i in range(k):
        if constant[i]:
            centroids[i], ssw[i], dist[i] = lo[i] - mu, 0.0, 0.0
    parts = _Parts(counts.astype(np.int64), centroids, ssw, dist / counts)

    # Pass 3: Dunn's extremes over every pair of blocks.
    dev = _device(device)
    search = _PairSearch(dev)
    cent = torch.from_numpy(centroids).to(dev)
    diam = np.zeros(k)
    between = np.full((k, k), np.inf)
    np.fill_diagonal(between, np.inf)

    shift = torch.from_numpy(mu)

    def split(X, pos):
        c = codes[pos]  # one float64 copy per class, no full-block intermediate
        return [torch.from_numpy(X[c == i]).to(torch.float64).sub_(shift).to(dev) for i in range(k)]

    blocks = list(range(0, len(rows), block_rows))
    for p, start in enumerate(blocks):
        pos_p = slice(start, start + block_rows)
        (_, Xp), = iter_row_blocks(cache, hook, pooling, rows[pos_p], block_rows)
        A = split(Xp, pos_p)
        del Xp
        for q in range(p, len(blocks)):
            if q == p:
                B = A
            else:
                pos_q = slice(blocks[q], blocks[q] + block_rows)
                (_, Xq), = iter_row_blocks(cache, hook, pooling, rows[pos_q], block_rows)
                B = split(Xq, pos_q)
                del Xq
            for i in range(k):
                if len(A[i]) and len(B[i]) and not (q == p and len(A[i]) < 2):
                    v, _ = search.extreme(A[i], None if q == p else B[i], cent[i], "max")
                    diam[i] = max(diam[i], v)
                for j in range(k):
                    if i == j or (q == p and j < i):
                        continue
                    if len(A[i]) and len(B[j]):
                        lo_ij, hi_ij = min(i, j), max(i, j)
                        mid = 0.5 * (cent[i] + cent[j])
                        v, _ = search.extreme(A[i], B[j], mid, "min")
                        between[lo_ij, hi_ij] = between[hi_ij, lo_ij] = min(between[lo_ij, hi_ij], v)
    indices, notes = _combine(parts, float(between.min()), float(diam.max()), gamma)
    dist_between = np.sqrt(between)
    np.fill_diagonal(dist_between, 0.0)
    return ClusterReport(
        **indices, gamma=gamma, n=int(counts.sum()), classes=classes, counts=counts.tolist(),
        min_between=math.sqrt(float(between.min())), max_diameter=math.sqrt(float(diam.max())),
        between=dist_between.tolist(), diameters=np.sqrt(diam).tolist(), notes=notes,
    )


def streamed_layer_aqi(
    cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, y: np.ndarray, *,
    class_names: Sequence[str] | None = None, gamma: float = 0.5, n_bootstrap: int = 200,
    n_permutations: int = 200, max_points: int = 1000, ci_level: float = 0.95, ci_method: str = "basic",
    seed: int = 0, device: Any = "auto", block_rows: int | None = None,
):
    """:func:`geomprobe.aqi.layer_aqi` of ``cache`` rows without loading the layer."""
    from geomprobe.aqi import CI_METHODS, _encode_labels, _layer_of, _layer_result, _resample

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and (np.diff(rows) <= 0).any():
        raise GeomprobeError("rows must be strictly increasing")
    report = streamed_cluster_report(cache, hook, pooling, rows, y, gamma=gamma, device=device, block_rows=block_rows)
    res = None
    if n_bootstrap or n_permutations:
        if ci_method not in CI_METHODS or not 0 < ci_level < 1 or max_points < 4 or min(n_bootstrap, n_permutations) < 0:
            raise GeomprobeError("invalid resampling settings; check n_bootstrap, ci_level, ci_method and max_points")
        codes, classes = _encode_labels(y, len(rows))
        if np.bincount(codes, minlength=len(classes)).min() < 2:
            raise GeomprobeError("a cluster has fewer than 2 points; resampling needs at least 2 per cluster")
        res = _resample(
            lambda picked: cache.read(hook, pooling, rows=rows[picked]), codes, len(classes),
            n_bootstrap=n_bootstrap, n_permutations=n_permutations, ci_level=ci_level, max_points=max_points,
            gamma=gamma, ci_method=ci_method, seed=seed,
        )
    return _layer_result(
        report, res, hook=hook, layer=_layer_of(hook), pooling=pooling, class_names=class_names, gamma=gamma,
        n_bootstrap=n_bootstrap, n_permutations=n_permutations, ci_level=ci_level, ci_method=ci_method,
        reduction="none", seed=seed,
    )
