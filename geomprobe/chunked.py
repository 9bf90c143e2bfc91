"""Metrics over caches larger than memory: read the rows of one layer in blocks, never whole.

What streams, per stage (every result is exact; it differs from the in-memory path only by
float64 summation order):

- AQI (:func:`streamed_layer_aqi`): centroids, Davies-Bouldin, Calinski-Harabasz and Xie-Beni
  from two passes of per-class sums; Dunn's two extremes by the same screened, exactly refined
  pair search as in memory, run over every pair of row blocks (O(n^2 d) work, O(block d)
  memory); bootstrap / permutation read only their ``max_points`` subsample, drawn with the same
  seeded draw as in memory. ``reduce`` (PCA / random projection first) is not streamed.
- Subspace overlap (:func:`streamed_class_basis`): per-class mean, then the centred d x d scatter
  matrix, whose eigendecomposition is the ``gram`` SVD of the class's rows (memory O(d^2)).
- Probes are not streamed: their optimisers make many passes over the training rows, which are
  held in memory for the selected hooks (choose fewer ``--hooks`` for huge caches).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .errors import GeomprobeError
from .store import CacheFile

BLOCK_BYTES = 32 << 20  # float64 bytes of one block of rows
STREAM_FRACTION = 0.25  # stream when one layer's float64 copy needs more than this share of free memory


def memory_available() -> int:
    """Bytes this process can still allocate: free RAM, capped by an address-space limit (ulimit -v)."""
    avail = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as handle:
                used = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            used = 0
        avail = min(avail, max(0, soft - used))
    return int(avail)


def needs_streaming(n_rows: int, d: int) -> bool:
    """Whether one layer's rows (as the float64 copies the exact metrics make) would crowd memory."""
    return 3 * n_rows * d * 8 > STREAM_FRACTION * memory_available()


def block_rows_for(d: int, block_bytes: int | None = None) -> int:
    budget = block_bytes or min(BLOCK_BYTES, max(1 << 20, memory_available() // 16))
    return max(16, budget // max(1, 8 * d))


def iter_row_blocks(cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, block_rows: int
                    ) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(positions in rows, float32 activations)`` for sorted ``rows``, ``block_rows`` at a time."""
    for s in range(0, len(rows), block_rows):
        idx = rows[s : s + block_rows]
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if hi - lo <= 2 * len(idx):  # nearly contiguous: one slice read, then pick
            X = cache.read(hook, pooling, rows=slice(lo, hi))[idx - lo]
        else:
            X = cache.read(hook, pooling, rows=idx)
        if not np.isfinite(X).all():
            raise GeomprobeError(f"activations contain NaN or inf near row {lo}; drop those rows or fix the cache")
        yield slice(s, s + len(idx)), X


# ---------------------------------------------------------------------------------------------
# AQI
# ---------------------------------------------------------------------------------------------
def streamed_cluster_report(
    cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, labels: Sequence[int], *,
    gamma: float = 0.5, device: Any = "auto", block_rows: int | None = None,
):
    """:func:`geomprobe.geometry.cluster_report` of ``cache``'s ``rows`` at ``hook``, read in blocks."""
    from .geometry import ClusterReport, _combine, _device, _encode_labels, _PairSearch, _Parts

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
    """:func:`geomprobe.geometry.layer_aqi` of ``cache`` rows without loading the layer."""
    from .geometry import CI_METHODS, _encode_labels, _layer_of, _layer_result, _resample

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


# ---------------------------------------------------------------------------------------------
# Subspace bases
# ---------------------------------------------------------------------------------------------
def class_scatter(cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, *, center: bool = True,
                  block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean, scatter, n)``: float64 mean and ``sum (x - mean)(x - mean)^T`` (uncentred if not ``center``)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    d = cache.d_model
    block_rows = block_rows or block_rows_for(d)
    total = np.zeros(d)
    for _, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
        total += X.astype(np.float64).sum(0)
    mean = total / max(1, len(rows))
    shift = torch.from_numpy(mean if center else np.zeros(d))
    S = torch.zeros((d, d), dtype=torch.float64)
    for _, X in iter_row_blocks(cache, hook, pooling, rows, block_rows):
        T = torch.from_numpy(X).to(torch.float64).sub_(shift)
        S.addmm_(T.T, T)
    return mean, S.numpy(), len(rows)


def streamed_class_basis(
    cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, energy: float | None = 0.9, k: int | None = None,
    center: bool = True, *, name: str = "data", block_rows: int | None = None,
):
    """:func:`geomprobe.subspace.basis.subspace_basis` of ``rows`` from their d x d scatter matrix."""
    from .subspace.basis import Basis, _choose_k, _numerical_rank, check_energy, check_k

    if k is not None:
        k = check_k(k)
        energy = None
    else:
        energy = check_energy(energy)
    n = len(rows)
    if n < (2 if center else 1):
        raise GeomprobeError(f"{name} has {n} sample(s); centring needs at least 2 (or pass center=False / --no-center)")
    if k is not None and k > n - (1 if center else 0):
        raise GeomprobeError(f"{name} has {n} samples, fewer directions than k={k}; lower --k or add samples")
    mean, S, _ = class_scatter(cache, hook, pooling, rows, center=center, block_rows=block_rows)
    d = S.shape[0]
    if k is not None and k > d:
        raise GeomprobeError(f"k={k} is larger than the dimension d={d}; lower --k")
    total = float(np.trace(S))
    if total == 0.0:
        raise GeomprobeError(f"{name} has no variance (all rows identical); check the inputs")
    evals, evecs = torch.linalg.eigh(torch.from_numpy(S))
    order = torch.argsort(evals, descending=True)
    s = evals[order].clamp_min(0).sqrt()
    U = evecs[:, order]
    rank = _numerical_rank(s, (d, n))
    chosen = _choose_k(s, total, rank, energy, k) or rank
    U, s = U[:, :chosen], s[:chosen]
    return Basis(
        Q=U.numpy(), singular_values=s.numpy(), energy=float((s**2).sum()) / total, n_samples=int(n),
        centered=bool(center), rank=rank, method="gram(streamed)", energy_target=energy, k_requested=k,
        mean=mean if center else None,
    )
