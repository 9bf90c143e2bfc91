"""AQI over caches larger than memory (see :mod:`geomprobe.activations.blocks`).

The same statistics as in memory, accumulated over row blocks: pass 1 feeds per-cluster sums to
:class:`~geomprobe.aqi.stats.ClusterStatsAccumulator`, pass 2 the distances to the centroids,
pass 3 runs :class:`~geomprobe.aqi.pairwise.PairExtremes` over every pair of row blocks. The
report then comes from the same :func:`~geomprobe.aqi.indices.report_from_stats` as in memory,
so the numbers agree up to float64 summation order. Resampling reads only its subsample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from geomprobe.activations.blocks import block_rows_for, iter_row_blocks
from geomprobe.activations.store import CacheFile
from geomprobe.aqi.indices import DEFAULT_GAMMA, ClusterReport, report_from_stats
from geomprobe.aqi.layers import LayerAQI, layer_index, layer_result
from geomprobe.aqi.pairwise import PairExtremes, PairSearch
from geomprobe.aqi.resampling import check_resampling_settings, resample_rows
from geomprobe.aqi.stats import ClusterStatsAccumulator
from geomprobe.aqi.validation import check_clusters, encode_labels
from geomprobe.core.device import resolve_device
from geomprobe.core.errors import GeomprobeError


def streamed_cluster_report(
    cache: CacheFile,
    hook: str,
    pooling: str,
    rows: np.ndarray,
    labels: Any,
    *,
    gamma: float = DEFAULT_GAMMA,
    device: Any = "auto",
    block_rows: int | None = None,
) -> ClusterReport:
    """:func:`geomprobe.aqi.cluster_report` of ``cache``'s ``rows`` at ``hook``, read in blocks."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    codes, classes = encode_labels(labels, len(rows))
    codes = codes[order]
    check_clusters(codes, classes)
    k = len(classes)
    d = cache.d_model
    block_rows = block_rows or block_rows_for(d)

    def blocks() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for pos, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
            yield codes[pos], torch.from_numpy(X).to(torch.float64)

    # Pass 1: per-cluster sums, hence the global mean and the centroids about it.
    acc = ClusterStatsAccumulator(k, d)
    for c, T in blocks():
        for i in range(k):
            acc.add_rows(i, T[torch.from_numpy(c == i)])
    mu = acc.overall_mean()
    acc.fix_centroids(shift=mu)
    # Pass 2: scatter about each centroid and mean distance to it.
    for c, T in blocks():
        T.sub_(mu)
        for i in range(k):
            acc.add_scatter(i, T[torch.from_numpy(c == i)])
    stats = acc.result()

    # Pass 3: Dunn's extremes over every pair of blocks.
    dev = resolve_device(device)
    extremes = PairExtremes(k, PairSearch(dev))
    cent = (torch.from_numpy(stats.centroids) + mu).to(dev)  # in the cache's own coordinates

    def read_split(start: int) -> list[torch.Tensor]:
        pos = slice(start, start + block_rows)
        ((_, X),) = iter_row_blocks(cache, hook, pooling, rows[pos], block_rows)
        c = codes[pos]  # one float64 copy per cluster, uncentred so near-duplicate differences stay exact
        return [torch.from_numpy(X[c == i]).to(torch.float64).to(dev) for i in range(k)]

    starts = range(0, len(rows), block_rows)
    for p, start in enumerate(starts):
        A = read_split(start)
        extremes.update(A, None, cent)
        for other in starts[p + 1 :]:
            extremes.update(A, read_split(other), cent)
    return report_from_stats(stats.with_extremes(extremes.between_sq, extremes.diameter_sq), classes, gamma)


def streamed_layer_aqi(
    cache: CacheFile,
    hook: str,
    pooling: str,
    rows: np.ndarray,
    y: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    gamma: float = DEFAULT_GAMMA,
    n_bootstrap: int = 200,
    n_permutations: int = 200,
    max_points: int = 1000,
    ci_level: float = 0.95,
    ci_method: str = "basic",
    seed: int = 0,
    device: Any = "auto",
    block_rows: int | None = None,
) -> LayerAQI:
    """:func:`geomprobe.aqi.layer_aqi` of ``cache`` rows without loading the layer."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) > 1 and (np.diff(rows) <= 0).any():
        raise GeomprobeError("rows must be strictly increasing")
    resampled = bool(n_bootstrap or n_permutations)
    codes, classes = encode_labels(y, len(rows))
    if resampled:  # refused before the passes over the cache, which can take long
        check_resampling_settings(n_bootstrap, n_permutations, ci_level, ci_method, max_points)
        check_clusters(codes, classes, min_cluster_size=2)
    report = streamed_cluster_report(cache, hook, pooling, rows, y, gamma=gamma, device=device, block_rows=block_rows)
    res = None
    if resampled:
        res = resample_rows(
            lambda picked: cache.read(hook, pooling, rows=rows[picked]),
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
    return layer_result(
        report,
        res,
        hook=hook,
        layer=layer_index(hook),
        pooling=pooling,
        class_names=class_names,
        gamma=gamma,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        ci_method=ci_method,
        reduction="none",
        seed=seed,
    )
