"""Dunn's two pairwise extremes, exact, without an n-by-n matrix.

Dunn needs the nearest pair of points in different clusters and the farthest pair within one
cluster. :class:`PairSearch` finds either extreme with blocked matrix products (torch, CUDA when
present): each block of squared distances is screened with the expansion ``|a|^2 + |b|^2 - 2 a.b``
on translated float32 copies, every pair whose screened value is within a rigorous rounding
bound of the block's extreme is recomputed directly in float64 as ``sum((x_i - x_j)^2)`` from the
rows as given (never centred first: centring rounds each coordinate, which for near-duplicate
points far from the origin changes their tiny difference), and only blocks that can still beat
the running extreme are refined. The result equals a float64 brute force (scipy ``cdist``) up to
the rounding of that sum.

:class:`PairExtremes` keeps the running extremes per cluster (pair) over blocks of rows: the
in-memory path gives it all rows as one block, the streamed path every pair of row blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geomprobe.aqi.stats import row_chunks
from geomprobe.core.device import resolve_device


def _screen_ok_float32(device: torch.device) -> bool:
    # TF32 or reduced-precision float32 matmuls would void the rounding bound used for screening.
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return False
    return True


def dedupe_rows(A: np.ndarray) -> np.ndarray | None:
    """Rows to keep so that no exact duplicate remains (None: nothing to drop).

    Duplicates cannot change a min or a max, but many equal points make near-ties explode.
    An order-independent integer hash of the float64 bits finds candidate pairs; equal hashes are
    checked exactly.
    """
    if len(A) < 2:
        return None
    bits = np.ascontiguousarray(A).view(np.uint64)
    mult = np.random.default_rng(12345).integers(1, 2**63, size=A.shape[1], dtype=np.uint64) | np.uint64(1)
    h = np.empty(len(A), dtype=np.uint64)
    for s in row_chunks(len(A)):
        h[s] = (bits[s] * mult).sum(axis=1, dtype=np.uint64)  # wraps modulo 2**64 by design
    order = np.argsort(h, kind="stable")
    hs = h[order]
    same_hash = np.flatnonzero(hs[1:] == hs[:-1])
    if len(same_hash) == 0:
        return None
    keep = np.ones(len(A), dtype=bool)
    for i in same_hash:  # consecutive equal rows: drop the later one, so one copy of each stays
        a, b = order[i], order[i + 1]
        if np.array_equal(A[a], A[b]):
            keep[b] = False
    return None if keep.all() else keep


class PairSearch:
    """Exact min or max of squared Euclidean distances between two point sets, blockwise.

    Screening: ``G = |b|^2 - 2 a.b`` per block (one matmul), reduced row-wise; ``|a|^2`` is added
    to the row extremes only. A block is skipped when its screened extreme cannot beat the exact
    running extreme by more than the rounding bound; otherwise every pair within twice the bound of
    the screened extreme is recomputed directly in float64. Blocks with very many such pairs (wide
    bounds, e.g. far-off clusters) are screened again in float64 before refining.
    """

    def __init__(self, device: torch.device, block: int | None = None, screen_dtype: torch.dtype | None = None):
        self.device = device
        self.block = block or (8192 if device.type == "cuda" else 2048)
        if screen_dtype is None:
            screen_dtype = torch.float32 if _screen_ok_float32(device) else torch.float64
        self.screen_dtype = screen_dtype
        self.refine_batch = 16384
        self.refined = 0  # pairs recomputed directly (diagnostics)

    @staticmethod
    def _bound_factor(d: int, dtype: torch.dtype) -> float:
        # |screened - exact| <= (d + 10) u (|a|^2 + |b|^2) covers the dot product (any summation
        # order), the norms, the additions and rounding the translated inputs to the screening
        # dtype; doubled for margin.
        u = 2.0**-24 if dtype == torch.float32 else 2.0**-53
        return (2 * d + 64) * u

    def _prepare(self, A: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype):
        out = torch.empty(A.shape, dtype=dtype, device=A.device)
        norms = torch.empty(A.shape[0], dtype=torch.float64, device=A.device)
        for s in row_chunks(A.shape[0]):
            t = A[s] - shift
            norms[s] = (t * t).sum(1)
            out[s] = t
        return out, norms

    def _refine(self, A, B, rows, cols, mode):
        best, arg = (math.inf if mode == "min" else -math.inf), None
        for s in range(0, len(rows), self.refine_batch):
            r, c = rows[s : s + self.refine_batch], cols[s : s + self.refine_batch]
            exact = (A.index_select(0, r) - B.index_select(0, c)).square_().sum(1)
            i = int(exact.argmin() if mode == "min" else exact.argmax())
            v = float(exact[i])
            if (mode == "min" and v < best) or (mode == "max" and v > best):
                best, arg = v, (int(r[i]), int(c[i]))
        self.refined += len(rows)
        return best, arg

    def _candidates(self, a, b, na, nb, mode, diagonal, best):
        """Screen one block; return (row, col) candidate indices, None if it cannot improve, or 'many'."""
        dtype = a.dtype
        G = torch.addmm(nb.to(dtype)[None, :], a, b.T, beta=1.0, alpha=-2.0)
        if diagonal:  # same set: keep pairs i < j only
            lower = torch.ones(G.shape, dtype=torch.bool, device=G.device).tril_()
            G.masked_fill_(lower, -math.inf)
        bound = self._bound_factor(a.shape[1], dtype) * float(na.max() + nb.max())
        if mode == "min":
            rows = G.min(1).values.to(torch.float64) + na
            edge = float(rows.min())
            if edge - bound >= best:
                return None
            keep = torch.nonzero(rows <= edge + 2 * bound).flatten()
            sub = G.index_select(0, keep).to(torch.float64) + na.index_select(0, keep)[:, None]
            idx = torch.nonzero(sub <= edge + 2 * bound)
        else:
            rows = G.max(1).values.to(torch.float64) + na
            edge = float(rows.max())
            if edge + bound <= best:
                return None
            keep = torch.nonzero(rows >= edge - 2 * bound).flatten()
            sub = G.index_select(0, keep).to(torch.float64) + na.index_select(0, keep)[:, None]
            idx = torch.nonzero(sub >= edge - 2 * bound)
        if len(idx) > 4 * self.block and dtype != torch.float64:
            return "many"
        return keep[idx[:, 0]], idx[:, 1]

    def extreme(self, A: torch.Tensor, B: torch.Tensor | None, shift: torch.Tensor, mode: str):
        """``min`` (A vs B) or ``max`` (A with itself when B is None) of ``|a - b|^2``, exact.

        ``A``/``B`` are float64 rows in the caller's original coordinates, on the device; the
        refinement takes their differences directly. ``shift`` (any point near the rows) is
        subtracted for screening only, so the screened norms stay small (the rounding bound
        scales with them).
        """
        same = B is None
        other = A if B is None else B
        As, nA = self._prepare(A, shift, self.screen_dtype)
        Bs, nB = (As, nA) if same else self._prepare(other, shift, self.screen_dtype)
        best = math.inf if mode == "min" else -math.inf
        arg = None
        bs = self.block
        for i0 in range(0, A.shape[0], bs):
            i1 = min(A.shape[0], i0 + bs)
            for j0 in range(i0 if same else 0, other.shape[0], bs):
                if mode == "min" and best == 0.0:
                    return best, arg
                j1 = min(other.shape[0], j0 + bs)
                diagonal = same and j0 == i0
                found = self._candidates(As[i0:i1], Bs[j0:j1], nA[i0:i1], nB[j0:j1], mode, diagonal, best)
                if isinstance(found, str):  # too many near-ties in float32: screen in float64
                    a64, b64 = A[i0:i1] - shift, other[j0:j1] - shift
                    found = self._candidates(a64, b64, nA[i0:i1], nB[j0:j1], mode, diagonal, best)
                if found is None:
                    continue
                v, pair = self._refine(A, other, found[0] + i0, found[1] + j0, mode)
                if (mode == "min" and v < best) or (mode == "max" and v > best):
                    best, arg = v, pair
        return best, arg


class PairExtremes:
    """Dunn's extremes accumulated over blocks of rows.

    ``between_sq`` (k, k): squared nearest cross-cluster distance per cluster pair (inf on the
    diagonal and until a pair is seen); ``diameter_sq`` (k,): squared largest within-cluster
    distance per cluster.
    """

    def __init__(self, k: int, search: PairSearch):
        self.search = search
        self.between_sq = np.full((k, k), np.inf)
        self.diameter_sq = np.zeros(k)

    def update(self, A: Sequence[torch.Tensor], B: Sequence[torch.Tensor] | None, centroids: torch.Tensor) -> None:
        """Fold in the pairs between two blocks, given as per-cluster rows on the search device.

        ``B`` None: the pairs within block ``A``. Rows are float64 in their original coordinates
        (not centred: see the module docstring). ``centroids`` (k, d), in the same coordinates:
        each screen is translated to them so its norms stay small.
        """
        same = B is None
        other = A if B is None else B
        k = len(A)
        for i in range(k):
            if len(A[i]) and len(other[i]) and not (same and len(A[i]) < 2):
                v, _ = self.search.extreme(A[i], None if same else other[i], centroids[i], "max")
                self.diameter_sq[i] = max(self.diameter_sq[i], v)
            for j in range(k):
                if i == j or (same and j < i) or not (len(A[i]) and len(other[j])):
                    continue
                mid = 0.5 * (centroids[i] + centroids[j])  # both sets measured from their midpoint
                v, _ = self.search.extreme(A[i], other[j], mid, "min")
                lo, hi = min(i, j), max(i, j)
                self.between_sq[lo, hi] = self.between_sq[hi, lo] = min(self.between_sq[lo, hi], v)


def pair_extremes(
    clusters: Sequence[torch.Tensor], centroids: np.ndarray, device: Any = "auto", block: int | None = None
) -> PairExtremes:
    """Dunn's extremes of per-cluster float64 rows held in memory (exact duplicates dropped first).

    ``clusters`` hold the rows in their original coordinates (uncentred, so differences of
    near-duplicates stay exact); ``centroids`` are in the same coordinates.
    """
    dev = resolve_device(device)
    tensors = []
    for A in clusters:
        keep = dedupe_rows(A.numpy())
        tensors.append((A if keep is None else A.index_select(0, torch.from_numpy(np.flatnonzero(keep)))).to(dev))
    extremes = PairExtremes(len(clusters), PairSearch(dev, block))
    extremes.update(tensors, None, torch.from_numpy(centroids).to(dev))
    return extremes
