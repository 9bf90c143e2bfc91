"""Per-cluster statistics, the one input every cluster index is computed from.

:class:`ClusterStatsAccumulator` gathers counts, centroids, within-cluster scatter and mean
distance to the centroid from rows given in any number of blocks, in two passes (sums, then
distances to the fixed centroids). The in-memory path feeds each cluster as one block; the
streamed path (:mod:`geomprobe.aqi.streamed`) feeds blocks read from the cache. Both end in the
same :class:`ClusterStats`, which :mod:`geomprobe.aqi.indices` turns into indices.

Everything is float64 and exact up to summation order (O(n d) work).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError

ROW_CHUNK = 8192  # rows per temporary (rows - centroid) copy


def row_chunks(n: int, size: int = ROW_CHUNK) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass(eq=False)
class ClusterStats:
    """Sizes, centroids and scatter of k clusters, plus Dunn's pairwise extremes once searched.

    Coordinates are those the rows were given in (centred on the global mean by both AQI paths);
    no index depends on a translation.
    """

    counts: np.ndarray  # (k,) int64
    centroids: np.ndarray  # (k, d)
    ssw: np.ndarray  # (k,) sum of squared distances to the own centroid
    mean_dist: np.ndarray  # (k,) mean distance to the own centroid
    between_sq: np.ndarray | None = None  # (k, k) squared nearest cross-cluster distance, inf on the diagonal
    diameter_sq: np.ndarray | None = None  # (k,) squared largest within-cluster distance

    @property
    def k(self) -> int:
        return len(self.counts)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @cached_property
    def centroid_distances(self) -> np.ndarray:
        """(k, k) Euclidean distances between centroids."""
        C = self.centroids
        diff = C[:, None, :] - C[None, :, :]
        return np.sqrt((diff**2).sum(-1))

    @cached_property
    def off_diagonal(self) -> np.ndarray:
        """(k, k) mask of the pairs i != j."""
        return ~np.eye(self.k, dtype=bool)

    @property
    def within_scatter(self) -> float:
        """SSW: sum over clusters of squared distances to the own centroid."""
        return float(self.ssw.sum())

    @cached_property
    def between_scatter(self) -> float:
        """SSB: ``sum_i n_i |c_i - c|^2`` with ``c`` the overall mean."""
        counts, C = self.counts, self.centroids
        # all centroids equal: take one exactly, so SSB is exactly 0 (no rounding of the weighted mean)
        mean_all = C[0] if (C == C[0]).all() else (counts[:, None] * C).sum(0) / self.n
        return float((counts * ((C - mean_all) ** 2).sum(1)).sum())

    @property
    def has_extremes(self) -> bool:
        return self.between_sq is not None and self.diameter_sq is not None

    def extremes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(between_sq, diameter_sq)``; refused when the pairwise search has not run."""
        if self.between_sq is None or self.diameter_sq is None:
            raise GeomprobeError("these cluster statistics have no pairwise extremes; compute them with cluster_report")
        return self.between_sq, self.diameter_sq

    @property
    def min_between_sq(self) -> float:
        """Squared distance of the nearest pair of points in different clusters (Dunn's numerator)."""
        return float(self.extremes()[0].min())

    @property
    def max_diameter_sq(self) -> float:
        """Squared largest distance between two points of one cluster (Dunn's denominator)."""
        return float(self.extremes()[1].max())

    def with_extremes(self, between_sq: np.ndarray, diameter_sq: np.ndarray) -> ClusterStats:
        return replace(self, between_sq=between_sq, diameter_sq=diameter_sq)


class ClusterStatsAccumulator:
    """Build :class:`ClusterStats` from rows given block by block.

    Pass 1: :meth:`add_rows` for every block (sums), then :meth:`fix_centroids`. Pass 2:
    :meth:`add_scatter` for every block, with rows in the centroid coordinates (minus the same
    ``shift``). Then :meth:`result`.

    A cluster whose rows are all identical gets that row as its centroid and exactly zero
    scatter (the mean of identical rows can differ from them by rounding). Pass 2 tells such
    clusters apart exactly and almost for free: identical rows have identical distances to the
    centroid, so rows are compared with the cluster's first row only while that holds.
    """

    def __init__(self, k: int, d: int):
        self.counts = np.zeros(k, dtype=np.int64)
        self._sums = torch.zeros((k, d), dtype=torch.float64)
        self._first = torch.zeros((k, d), dtype=torch.float64)  # each cluster's first row (pass 1 coordinates)
        self._ssw = np.zeros(k)
        self._dist = np.zeros(k)
        self._constant = np.ones(k, dtype=bool)  # no two different rows seen yet in pass 2
        self._shift: torch.Tensor | None = None
        self._centroids: torch.Tensor | None = None

    def add_rows(self, cluster: int, rows: torch.Tensor) -> None:
        """Pass 1: float64 rows of one cluster (CPU)."""
        if self._centroids is not None:
            raise RuntimeError("add_rows after fix_centroids: the first pass is over")
        if not len(rows):
            return
        if self.counts[cluster] == 0:
            self._first[cluster] = rows[0]
        self.counts[cluster] += len(rows)
        self._sums[cluster] += rows.sum(0)

    def overall_mean(self) -> torch.Tensor:
        """Mean of all rows seen in pass 1 (the streamed path centres on it)."""
        return self._sums.sum(0) / int(self.counts.sum())

    def fix_centroids(self, shift: torch.Tensor | None = None) -> torch.Tensor:
        """End pass 1: the mean of each cluster (minus ``shift``, if given), the centre of pass 2."""
        if (self.counts == 0).any():
            raise GeomprobeError(f"cluster {int(np.argmin(self.counts))} has no rows; every cluster needs at least one")
        centroids = self._sums / torch.from_numpy(self.counts)[:, None]
        if shift is not None:
            centroids -= shift
        self._shift = shift
        self._centroids = centroids
        return centroids

    def add_scatter(self, cluster: int, rows: torch.Tensor) -> None:
        """Pass 2: the same cluster's rows again, in the centroid coordinates."""
        if self._centroids is None:
            raise RuntimeError("add_scatter before fix_centroids")
        c = self._centroids[cluster]
        for s in row_chunks(len(rows)):
            sq = (rows[s] - c).square_().sum(1)
            if self._constant[cluster] and not (sq.min() == sq.max() and (rows[s] == self._first_row(cluster)).all()):
                self._constant[cluster] = False
            self._ssw[cluster] += float(sq.sum())
            self._dist[cluster] += float(sq.sqrt_().sum())

    def _first_row(self, cluster: int) -> torch.Tensor:
        first = self._first[cluster]
        return first if self._shift is None else first - self._shift

    def result(self) -> ClusterStats:
        """The statistics after pass 2; constant clusters are centred on their row with zero scatter."""
        if self._centroids is None:
            raise RuntimeError("result before fix_centroids")
        centroids = self._centroids.numpy().copy()
        ssw, dist = self._ssw.copy(), self._dist.copy()
        for i in np.flatnonzero(self._constant):
            centroids[i], ssw[i], dist[i] = self._first_row(int(i)).numpy(), 0.0, 0.0
        return ClusterStats(counts=self.counts.copy(), centroids=centroids, ssw=ssw, mean_dist=dist / self.counts)


def cluster_stats(clusters: Sequence[torch.Tensor]) -> ClusterStats:
    """:class:`ClusterStats` of per-cluster float64 row tensors held in memory (one block each)."""
    acc = ClusterStatsAccumulator(len(clusters), clusters[0].shape[1])
    for i, rows in enumerate(clusters):
        acc.add_rows(i, rows)
    acc.fix_centroids()
    for i, rows in enumerate(clusters):
        acc.add_scatter(i, rows)
    return acc.result()


def global_mean(X: np.ndarray) -> torch.Tensor:
    """Float64 mean row of ``X``, summed in row chunks (float32 input is never copied whole)."""
    total = torch.zeros(X.shape[1], dtype=torch.float64)
    for s in row_chunks(len(X)):
        total += torch.from_numpy(X[s]).to(torch.float64).sum(0)
    return total / len(X)


def split_clusters(X: np.ndarray, codes: np.ndarray, k: int, shift: torch.Tensor | None | str = "mean") -> list[torch.Tensor]:
    """Per-cluster float64 copies minus ``shift`` ("mean": the global mean; None: as given).

    Centring keeps sums and scatter accurate; a rounding error in the mean is a common
    translation, which no index sees. Dunn's pair search takes the rows uncentred (``None``),
    because centring rounds the tiny differences of near-duplicate points far from the origin.
    """
    if isinstance(shift, str):
        shift = global_mean(X)
    copies = [torch.from_numpy(X[codes == i]).to(torch.float64) for i in range(k)]
    return copies if shift is None else [c.sub_(shift) for c in copies]
