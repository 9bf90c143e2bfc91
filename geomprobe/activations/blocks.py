"""Caches larger than memory: read the rows of one layer in blocks, never whole.

The stages' streamed paths build on this: :mod:`geomprobe.aqi.streamed` and
:mod:`geomprobe.subspace.streamed`.

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

import os
import resource
from collections.abc import Iterator

import numpy as np

from geomprobe.activations.store import CacheFile
from geomprobe.core.errors import GeomprobeError

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


def iter_row_blocks(
    cache: CacheFile, hook: str, pooling: str, rows: np.ndarray, block_rows: int
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
