"""Cluster-separation indices and the Alignment Quality Index (AQI), exact and fast.

The four indices of the AQI paper are computed on raw activations, in float64:

* Davies-Bouldin (DBS, lower is better): mean over clusters of the worst ratio
  ``(S_i + S_j) / |c_i - c_j|`` with ``S_i`` the mean distance of cluster i's points to its centroid.
* Dunn (DI, higher is better): smallest distance between two points of different clusters divided
  by the largest distance between two points of one cluster (Euclidean, exact).
* Xie-Beni, hard labels (XBI, lower is better): ``SSW / (n * min_{i<j} |c_i - c_j|^2)``.
* Calinski-Harabasz (CHI, higher is better): ``(SSB / (k-1)) / (SSW / (n-k))``.

``AQI = gamma / (1 + DBS) + (1 - gamma) * DI / (1 + DI)`` (``gamma = 0.5``) lies in [0, 1] and is
invariant to scaling, rotating and translating the activations, so it compares across models.

Dunn's two pairwise extremes are found with blocked matrix products (torch, CUDA when present):
each block of squared distances is screened with the expansion ``|a|^2 + |b|^2 - 2 a.b`` on
translated float32 copies, every pair whose screened value is within a rigorous rounding bound of
the block's extreme is recomputed directly in float64 from the centred data, and only blocks that
can still beat the running extreme are refined. No n-by-n matrix is ever built; the result equals
a float64 brute force up to float64 rounding.

Degenerate geometry has defined values (the limits when clusters merge or shrink to points),
flagged by notes and a :class:`DegenerateClustersWarning`, never by a silent fallback:
a centroid distance of 0 gives DBS = XBI = inf, a cross-cluster distance of 0 gives DI = 0, zero
diameters with distinct clusters give DI = inf, zero within-cluster scatter gives CHI = inf
(or 0 when the between scatter is 0 too). So constant activations give AQI = 0 and clusters that
are each one repeated point give AQI = 1. See docs/aqi.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.labels import BinaryLabels, binary_labels

INDEX_NAMES = ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz")
DEFAULT_GAMMA = 0.5
VARIANTS = ("dbs-dunn", "chi-xb")
METRIC_DTYPE = "float64"
_ROW_CHUNK = 8192


class DegenerateClustersWarning(UserWarning):
    """An index took one of its documented limit values (inf or 0) because of degenerate geometry."""


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------
def _as_matrix(X: Any, what: str = "activations", keep_float: bool = False) -> np.ndarray:
    """A finite 2-D float64 array (``keep_float``: float32 stays float32, to avoid a full copy)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().to("cpu", torch.float64).numpy()
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise GeomprobeError(f"{what} must be a numeric (n, d) array; got dtype {X.dtype}")
    if X.ndim != 2:
        raise GeomprobeError(f"{what} must be 2-D (n, d); got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise GeomprobeError(f"{what} are empty (shape {X.shape}); give at least two points per cluster")
    if X.dtype.kind == "f" and not np.isfinite(X).all():  # checked before the float64 copy: cheaper
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise GeomprobeError(f"{what} contain NaN or inf in {bad} row(s); drop those rows or fix the cache")
    if keep_float and X.dtype in (np.float32, np.float64):
        return np.ascontiguousarray(X)
    return np.ascontiguousarray(X, dtype=np.float64)


def _encode_labels(labels: Any, n: int) -> tuple[np.ndarray, list]:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise GeomprobeError(f"labels must be 1-D; got shape {labels.shape}")
    if len(labels) != n:
        raise GeomprobeError(f"{len(labels)} labels for {n} activation rows; give one label per row")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise GeomprobeError("labels contain NaN or inf; give integer or string labels")
    classes, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64).ravel(), classes.tolist()


def _validate(X: Any, labels: Any, min_cluster_size: int = 1) -> tuple[np.ndarray, np.ndarray, list]:
    X = _as_matrix(X, keep_float=True)
    codes, classes = _encode_labels(labels, X.shape[0])
    if len(classes) < 2:
        raise GeomprobeError(
            f"need two or more clusters; all {X.shape[0]} rows have label {classes[0]!r} (check the labels or --positive-label)"
        )
    counts = np.bincount(codes, minlength=len(classes))
    if counts.max() < 2:
        raise GeomprobeError(
            "every cluster has a single point, so Calinski-Harabasz and Dunn are undefined; give at least one cluster two or more points"
        )
    if counts.min() < min_cluster_size:
        small = classes[int(np.argmin(counts))]
        raise GeomprobeError(
            f"cluster {small!r} has {int(counts.min())} point(s); resampling needs at least {min_cluster_size} per cluster"
        )
    return X, codes, classes


# ---------------------------------------------------------------------------------------------
# Centroid-based parts (exact, O(n d))
# ---------------------------------------------------------------------------------------------
def _row_chunks(n: int, size: int = _ROW_CHUNK):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _is_constant(A: torch.Tensor | np.ndarray) -> bool:
    if len(A) <= 1:
        return True
    if isinstance(A, np.ndarray):
        return bool((A.max(axis=0) == A.min(axis=0)).all())
    return bool((A.amax(0) == A.amin(0)).all())


@dataclass
class _Parts:
    counts: np.ndarray  # (k,)
    centroids: np.ndarray  # (k, d), in centred coordinates
    ssw: np.ndarray  # (k,) sum of squared distances to own centroid
    mean_dist: np.ndarray  # (k,) mean distance to own centroid


def _centroid_parts(clusters: Sequence[torch.Tensor]) -> _Parts:
    """Exact per-cluster centroid, scatter and mean distance (float64, O(n d), chunked)."""
    k = len(clusters)
    d = clusters[0].shape[1]
    counts = np.array([len(A) for A in clusters], dtype=np.int64)
    centroids = np.zeros((k, d))
    ssw = np.zeros(k)
    mean_dist = np.zeros(k)
    for i, A in enumerate(clusters):
        c = A.mean(0)
        sq_total, dist_total = 0.0, 0.0
        for s in _row_chunks(len(A)):
            sq = (A[s] - c).square_().sum(1)
            sq_total += float(sq.sum())
            dist_total += float(sq.sqrt_().sum())
        # A constant cluster leaves only the mean's rounding here; make it exactly zero.
        if sq_total <= 1e-24 * len(A) * (float(c @ c) + 1e-300) and _is_constant(A):
            c, sq_total, dist_total = A[0], 0.0, 0.0
        centroids[i] = c.cpu().numpy()
        ssw[i] = sq_total
        mean_dist[i] = dist_total / len(A)
    return _Parts(counts, centroids, ssw, mean_dist)


def _combine(parts: _Parts, min_between_sq: float, max_diameter_sq: float, gamma: float) -> tuple[dict, list[str]]:
    """The four indices and AQI from centroid parts and Dunn's two extremes, with degenerate limits."""
    notes: list[str] = []
    counts, C = parts.counts, parts.centroids
    k = len(counts)
    n = int(counts.sum())
    diff = C[:, None, :] - C[None, :, :]
    cdist = np.sqrt((diff**2).sum(-1))
    off = ~np.eye(k, dtype=bool)
    coincide = bool((cdist[off] == 0).any())

    # Davies-Bouldin: coinciding centroids are the worst case (ratio inf), not skipped.
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = parts.mean_dist[:, None] + parts.mean_dist[None, :]
        ratio = np.where(cdist > 0, spread / np.where(cdist > 0, cdist, 1.0), np.inf)
    ratio[~off] = -np.inf
    dbs = float(ratio.max(axis=1).mean())
    if coincide:
        notes.append("two cluster centroids coincide: Davies-Bouldin and Xie-Beni are inf")

    # Calinski-Harabasz
    mean_all = C[0] if (C == C[0]).all() else (counts[:, None] * C).sum(0) / n
    ssb = float((counts * ((C - mean_all) ** 2).sum(1)).sum())
    ssw = float(parts.ssw.sum())
    if ssw > 0:
        chi = ssb * (n - k) / (ssw * (k - 1))
    elif ssb > 0:
        chi = math.inf
        notes.append("zero within-cluster scatter: Calinski-Harabasz is inf")
    else:
        chi = 0.0

    # Xie-Beni (hard labels)
    min_c_sq = float((cdist[off] ** 2).min())
    if min_c_sq > 0:
        xbi = ssw / (n * min_c_sq)
    else:
        xbi = math.inf

    # Dunn
    if min_between_sq == 0:
        dunn = 0.0
        notes.append("a point of one cluster coincides with a point of another: Dunn is 0")
    elif max_diameter_sq == 0:
        dunn = math.inf
        notes.append("every cluster is a single repeated point: Dunn is inf (perfect separation)")
    else:
        dunn = math.sqrt(min_between_sq) / math.sqrt(max_diameter_sq)

    if ssw == 0 and ssb == 0:
        notes.insert(0, "constant activations (every point identical): the classes are not separated, AQI = 0")
    indices = {
        "davies_bouldin": dbs,
        "dunn": dunn,
        "xie_beni": xbi,
        "calinski_harabasz": chi,
    }
    indices["aqi"] = aqi_from_indices(dbs, dunn, gamma)
    return indices, notes


def aqi_from_indices(davies_bouldin: float, dunn: float, gamma: float = DEFAULT_GAMMA) -> float:
    """``gamma / (1 + DBS) + (1 - gamma) * DI / (1 + DI)``, with the limits DBS = inf -> 0, DI = inf -> 1."""
    if not 0.0 <= gamma <= 1.0:
        raise GeomprobeError(f"gamma must be in [0, 1]; got {gamma}")
    dbs_term = 0.0 if math.isinf(davies_bouldin) else 1.0 / (1.0 + davies_bouldin)
    dunn_term = 1.0 if math.isinf(dunn) else dunn / (1.0 + dunn)
    return gamma * dbs_term + (1.0 - gamma) * dunn_term


# ---------------------------------------------------------------------------------------------
# Exact pairwise extremes by screened, blocked matrix products
# ---------------------------------------------------------------------------------------------
def _screen_ok_float32(device: torch.device) -> bool:
    # TF32 or reduced-precision float32 matmuls would void the rounding bound used for screening.
    if torch.get_float32_matmul_precision() != "highest":
        return False
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return False
    return True


def _dedupe_rows(A: np.ndarray) -> np.ndarray | None:
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
    for s in _row_chunks(len(A)):
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


class _PairSearch:
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
        for s in _row_chunks(A.shape[0]):
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

        ``A``/``B`` are float64 on the device; ``shift`` is subtracted before screening so the
        screened norms stay small (the rounding bound scales with them).
        """
        same = B is None
        As, nA = self._prepare(A, shift, self.screen_dtype)
        Bs, nB = (As, nA) if same else self._prepare(B if B is not None else A, shift, self.screen_dtype)
        B = A if same else B
        best = math.inf if mode == "min" else -math.inf
        arg = None
        bs = self.block
        for i0 in range(0, A.shape[0], bs):
            i1 = min(A.shape[0], i0 + bs)
            for j0 in range(i0 if same else 0, B.shape[0], bs):
                if mode == "min" and best == 0.0:
                    return best, arg
                j1 = min(B.shape[0], j0 + bs)
                diagonal = same and j0 == i0
                found = self._candidates(As[i0:i1], Bs[j0:j1], nA[i0:i1], nB[j0:j1], mode, diagonal, best)
                if isinstance(found, str):  # too many near-ties in float32: screen in float64
                    a64, b64 = A[i0:i1] - shift, B[j0:j1] - shift
                    found = self._candidates(a64, b64, nA[i0:i1], nB[j0:j1], mode, diagonal, best)
                if found is None:
                    continue
                v, pair = self._refine(A, B, found[0] + i0, found[1] + j0, mode)
                if (mode == "min" and v < best) or (mode == "max" and v > best):
                    best, arg = v, pair
        return best, arg


@dataclass
class DunnParts:
    """Dunn's extremes: squared nearest cross-cluster distances and squared diameters."""

    between_sq: np.ndarray  # (k, k), inf on the diagonal
    diameter_sq: np.ndarray  # (k,)

    @property
    def min_between_sq(self) -> float:
        return float(self.between_sq.min())

    @property
    def max_diameter_sq(self) -> float:
        return float(self.diameter_sq.max())


def _dunn_parts(clusters: Sequence[torch.Tensor], centroids: np.ndarray, device, block: int | None) -> DunnParts:
    dev = _device(device)
    search = _PairSearch(dev, block)
    k = len(clusters)
    tensors = []
    for A in clusters:
        keep = _dedupe_rows(A.numpy())
        tensors.append((A if keep is None else A.index_select(0, torch.from_numpy(np.flatnonzero(keep)))).to(dev))
    cent = torch.from_numpy(centroids).to(dev)
    diam = np.zeros(k)
    for i, T in enumerate(tensors):
        if len(T) >= 2:
            diam[i], _ = search.extreme(T, None, cent[i], "max")
    between = np.full((k, k), np.inf)
    for i in range(k):
        for j in range(i + 1, k):
            mid = 0.5 * (cent[i] + cent[j])  # both sets measured from their midpoint
            v, _ = search.extreme(tensors[i], tensors[j], mid, "min")
            between[i, j] = between[j, i] = v
    return DunnParts(between, diam)


def _device(device) -> torch.device:
    from geomprobe.models import resolve_device

    return resolve_device(device if device is not None else "auto")


# ---------------------------------------------------------------------------------------------
# Public API: indices
# ---------------------------------------------------------------------------------------------
@dataclass
class ClusterReport:
    """All four indices, AQI and the quantities behind them (distances in the input's units)."""

    davies_bouldin: float
    dunn: float
    xie_beni: float
    calinski_harabasz: float
    aqi: float
    gamma: float
    n: int
    classes: list
    counts: list[int]
    min_between: float  # Dunn's numerator
    max_diameter: float  # Dunn's denominator
    between: list[list[float]]  # nearest cross-cluster distance per cluster pair
    diameters: list[float]
    notes: list[str] = field(default_factory=list)

    @property
    def indices(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in (*INDEX_NAMES, "aqi")}

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def _split(X: np.ndarray, codes: np.ndarray, k: int) -> list[torch.Tensor]:
    """Per-cluster float64 copies centred on the global mean (float32 input is never copied whole).

    A rounding error in the mean is a common translation, which no index sees.
    """
    mu = sum(torch.from_numpy(X[s]).to(torch.float64).sum(0) for s in _row_chunks(len(X))) / len(X)
    return [torch.from_numpy(X[codes == i]).to(torch.float64).sub_(mu) for i in range(k)]


def cluster_report(
    X: Any, labels: Any, *, gamma: float = DEFAULT_GAMMA, device: str | torch.device | None = "auto", block: int | None = None
) -> ClusterReport:
    """Exact DBS, Dunn, XBI, CHI and AQI of ``X`` (n, d) grouped by ``labels`` (two or more clusters)."""
    X, codes, classes = _validate(X, labels)
    clusters = _split(X, codes, len(classes))
    del X
    parts = _centroid_parts(clusters)
    dunn = _dunn_parts(clusters, parts.centroids, device, block)
    indices, notes = _combine(parts, dunn.min_between_sq, dunn.max_diameter_sq, gamma)
    between = np.sqrt(dunn.between_sq)
    np.fill_diagonal(between, 0.0)
    return ClusterReport(
        **indices, gamma=gamma, n=int(parts.counts.sum()), classes=classes, counts=parts.counts.tolist(),
        min_between=math.sqrt(dunn.min_between_sq), max_diameter=math.sqrt(dunn.max_diameter_sq),
        between=between.tolist(), diameters=np.sqrt(dunn.diameter_sq).tolist(), notes=notes,
    )


def cluster_indices(
    X: Any, labels: Any, *, gamma: float = DEFAULT_GAMMA, device: str | torch.device | None = "auto", block: int | None = None
) -> dict[str, float]:
    """``{davies_bouldin, dunn, xie_beni, calinski_harabasz, aqi}`` on raw activations, exact, float64.

    DBS and CHI equal scikit-learn's scores on non-degenerate data; Dunn is the classic
    nearest-cross-pair / largest-diameter ratio; Xie-Beni uses hard labels. Degenerate geometry
    gives the documented limit values with a :class:`DegenerateClustersWarning`.
    """
    report = cluster_report(X, labels, gamma=gamma, device=device, block=block)
    if report.notes:
        warnings.warn("; ".join(report.notes), DegenerateClustersWarning, stacklevel=2)
    return report.indices


def davies_bouldin(X: Any, labels: Any) -> float:
    X, codes, classes = _validate(X, labels)
    parts = _centroid_parts(_split(X, codes, len(classes)))
    return _combine(parts, 1.0, 1.0, DEFAULT_GAMMA)[0]["davies_bouldin"]


def calinski_harabasz(X: Any, labels: Any) -> float:
    X, codes, classes = _validate(X, labels)
    parts = _centroid_parts(_split(X, codes, len(classes)))
    return _combine(parts, 1.0, 1.0, DEFAULT_GAMMA)[0]["calinski_harabasz"]


def xie_beni(X: Any, labels: Any) -> float:
    X, codes, classes = _validate(X, labels)
    parts = _centroid_parts(_split(X, codes, len(classes)))
    return _combine(parts, 1.0, 1.0, DEFAULT_GAMMA)[0]["xie_beni"]


def dunn_index(X: Any, labels: Any, *, device: str | torch.device | None = "auto", block: int | None = None) -> float:
    return cluster_report(X, labels, device=device, block=block).dunn


# ---------------------------------------------------------------------------------------------
# Paper variants and reductions
# ---------------------------------------------------------------------------------------------
def chi_xb_scores(calinski_harabasz: Sequence[float], xie_beni: Sequence[float], gamma: float = DEFAULT_GAMMA) -> np.ndarray:
    """The paper's second AQI variant on a 0-100 scale, over a collection (e.g. the layers of ONE model).

    ``gamma * CHI_norm + (1 - gamma) * XB_norm`` with ``CHI_norm`` min-max scaled to 0-100 within
    the collection and ``XB_norm = max(10, 100 * (1 - sigmoid((XB - median) / IQR)))``. Both
    normalisations depend on the collection, so these scores do not compare across models;
    reproduce published numbers with it, and compare with the default AQI. Entries are NaN where
    the normalisation is undefined (a single value, equal values or infinite indices).
    """
    chi = np.asarray(calinski_harabasz, dtype=np.float64)
    xb = np.asarray(xie_beni, dtype=np.float64)
    if chi.shape != xb.shape or chi.ndim != 1:
        raise GeomprobeError("calinski_harabasz and xie_beni must be 1-D sequences of the same length")
    out = np.full(len(chi), np.nan)
    if not (np.isfinite(chi).all() and np.isfinite(xb).all()) or len(chi) < 2:
        return out
    span = chi.max() - chi.min()
    q1, med, q3 = np.percentile(xb, [25, 50, 75])
    if span == 0 or q3 == q1:
        return out
    chi_norm = 100.0 * (chi - chi.min()) / span
    xb_norm = np.maximum(10.0, 100.0 * (1.0 - 1.0 / (1.0 + np.exp(-(xb - med) / (q3 - q1)))))
    return gamma * chi_norm + (1.0 - gamma) * xb_norm


REDUCTIONS = ("none", "pca", "tsne")


def parse_reduction(spec: str | None) -> tuple[str, int]:
    """``None``/``"none"``, ``"pca"``/``"pca:K"`` (default 3) or ``"tsne"``/``"tsne:K"`` (K <= 3)."""
    if spec is None or spec == "none":
        return "none", 0
    method, _, k = str(spec).partition(":")
    if method not in REDUCTIONS[1:]:
        raise GeomprobeError(f"unknown reduction {spec!r}; use none, pca, pca:K, tsne or tsne:K")
    try:
        dims = int(k) if k else 3
    except ValueError:
        raise GeomprobeError(f"cannot read the dimension in reduction {spec!r}; write e.g. pca:10") from None
    if dims < 1 or (method == "tsne" and dims > 3):
        raise GeomprobeError(f"reduction {spec!r}: dimension must be >= 1 (t-SNE: 1..3)")
    return method, dims


def reduce_activations(X: Any, spec: str | None, seed: int = 0) -> np.ndarray:
    """Optional paper-style reduction: StandardScaler, then PCA or t-SNE (the paper's scripts use 3-D t-SNE).

    Only for reproducing published numbers: t-SNE distorts distances, so indices on it are not exact
    properties of the activations (the default is no reduction).
    """
    method, dims = parse_reduction(spec)
    X = _as_matrix(X)
    if method == "none":
        return X
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    dims = min(dims, X.shape[1])
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=min(dims, X.shape[0]), random_state=seed).fit_transform(Z)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(1.0, (X.shape[0] - 1) / 3.0))
    return TSNE(n_components=dims, perplexity=perplexity, init="pca", random_state=seed).fit_transform(Z).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Uncertainty: bootstrap intervals and a label-permutation null
# ---------------------------------------------------------------------------------------------
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


def _exact_square_distances(Z: np.ndarray) -> np.ndarray:
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


def _replicate(Z: np.ndarray, D: np.ndarray, members: list[np.ndarray], gamma: float) -> dict[str, float]:
    """Indices of the multiset given by per-cluster row indices into Z (duplicates allowed)."""
    parts = _centroid_parts([torch.from_numpy(Z[idx]) for idx in members])
    uniq = [np.unique(idx) for idx in members]
    diam = max((float(D[np.ix_(u, u)].max()) if len(u) > 1 else 0.0) for u in uniq)
    between = min(float(D[np.ix_(uniq[i], uniq[j])].min()) for i in range(len(uniq)) for j in range(i + 1, len(uniq)))
    return _combine(parts, between, diam, gamma)[0]


CI_METHODS = ("percentile", "basic")


def _interval(values: np.ndarray, estimate: float, level: float, method: str) -> tuple[float, float]:
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    finite = np.isfinite(values).all()
    q_lo, q_hi = (float(v) for v in np.quantile(values, [lo, hi], method="linear" if finite else "inverted_cdf"))
    if method == "percentile":
        return q_lo, q_hi
    # basic (reverse percentile): 2*estimate - quantiles, which removes the bootstrap's first-order bias
    if not (finite and math.isfinite(estimate)):
        return math.nan, math.nan
    return 2 * estimate - q_hi, 2 * estimate - q_lo


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
    if n_bootstrap < 0 or n_permutations < 0:
        raise GeomprobeError("n_bootstrap and n_permutations must be >= 0")
    if not 0 < ci_level < 1:
        raise GeomprobeError(f"ci_level must be between 0 and 1; got {ci_level}")
    if ci_method not in CI_METHODS:
        raise GeomprobeError(f"unknown interval method {ci_method!r}; use {' or '.join(CI_METHODS)}")
    if max_points < 4:
        raise GeomprobeError(f"max_points must be at least 4; got {max_points}")
    X, codes, classes = _validate(X, labels, min_cluster_size=2)
    return _resample(
        lambda rows: X[rows], codes, len(classes), n_bootstrap=n_bootstrap, n_permutations=n_permutations,
        ci_level=ci_level, max_points=max_points, gamma=gamma, ci_method=ci_method, seed=seed,
    )


def _resample(
    read_rows, codes: np.ndarray, k: int, *, n_bootstrap: int, n_permutations: int, ci_level: float, max_points: int,
    gamma: float, ci_method: str, seed: int,
) -> Resampling:
    """:func:`resample_indices` given ``read_rows(rows) -> activations of those rows`` (rows sorted), so
    a cache too large for memory only ever reads its ``max_points`` subsample."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    rows = np.arange(n)
    subsampled = n > max_points
    if subsampled:
        # Stratified: keep class proportions, at least two rows per class.
        counts = np.bincount(codes, minlength=k)
        take = np.maximum(2, np.floor(counts * max_points / n).astype(int))
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(codes == i), size=t, replace=False) for i, t in enumerate(take)]))
    Z = np.asarray(read_rows(rows)).astype(np.float64)
    Z = Z - (Z.mean(axis=0) if not _is_constant(Z) else Z[0])
    y = codes[rows]
    D = _exact_square_distances(Z)
    members = [np.flatnonzero(y == i) for i in range(k)]
    observed = _replicate(Z, D, members, gamma)

    names = (*INDEX_NAMES, "aqi")
    boot = {name: np.empty(n_bootstrap) for name in names}
    for r in range(n_bootstrap):
        sample = [rng.choice(m, size=len(m), replace=True) for m in members]
        values = _replicate(Z, D, sample, gamma)
        for name in names:
            boot[name][r] = values[name]
    nan2 = (math.nan, math.nan)
    ci = {name: _interval(boot[name], observed[name], ci_level, ci_method) if n_bootstrap else nan2 for name in names}
    with np.errstate(invalid="ignore"):
        boot_mean = {name: float(boot[name].mean()) if n_bootstrap else math.nan for name in names}

    p_value = None
    if n_permutations:
        hits = 0
        tol = 1e-12 * max(1.0, abs(observed["aqi"]))
        for _ in range(n_permutations):
            perm = rng.permutation(y)
            values = _replicate(Z, D, [np.flatnonzero(perm == i) for i in range(k)], gamma)
            hits += values["aqi"] >= observed["aqi"] - tol
        p_value = (1 + hits) / (1 + n_permutations)
    return Resampling(
        n_bootstrap=n_bootstrap, n_permutations=n_permutations, ci_level=ci_level, resample_n=len(rows),
        subsampled=subsampled, subsample_aqi=observed["aqi"], ci=ci, ci_method=ci_method, bootstrap_mean=boot_mean,
        p_value=p_value, seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# Labels from a cache
# ---------------------------------------------------------------------------------------------
def choose_labels(
    labels: np.ndarray, label_names: Sequence[str], positive_label: str | None = None, label_pair: Sequence[str] | None = None
) -> BinaryLabels:
    """Pick the two classes (see :func:`geomprobe.core.labels.binary_labels`); unlabelled rows are dropped."""
    return binary_labels(labels, label_names, positive_label, label_pair)


# ---------------------------------------------------------------------------------------------
# Per-layer AQI over a cache
# ---------------------------------------------------------------------------------------------
@dataclass
class LayerAQI:
    hook: str
    layer: int
    pooling: str
    n: int
    n_per_class: dict[str, int]
    davies_bouldin: float
    dunn: float
    xie_beni: float
    calinski_harabasz: float
    aqi: float
    gamma: float
    aqi_ci_low: float
    aqi_ci_high: float
    ci: dict[str, tuple[float, float]]
    ci_level: float
    ci_method: str
    aqi_bootstrap_mean: float
    p_value: float | None
    n_bootstrap: int
    n_permutations: int
    resample_n: int
    subsampled: bool
    subsample_aqi: float
    min_between: float
    max_diameter: float
    reduction: str
    dtype: str = METRIC_DTYPE
    seed: int = 0
    variants: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["ci"] = {k: list(v) for k, v in self.ci.items()}
        # JSON has no inf: keep it readable as a string next to the null that write_json emits
        for name in INDEX_NAMES:
            value = record[name]
            if isinstance(value, float) and math.isinf(value):
                record[f"{name}_is"] = "inf" if value > 0 else "-inf"
        return record


def layer_aqi(
    X: Any,
    y: Any,
    *,
    hook: str = "",
    layer: int = -1,
    pooling: str = "",
    class_names: Sequence[str] | None = None,
    gamma: float = DEFAULT_GAMMA,
    n_bootstrap: int = 200,
    n_permutations: int = 200,
    max_points: int = 1000,
    ci_level: float = 0.95,
    ci_method: str = "basic",
    reduce: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> LayerAQI:
    """Exact indices + AQI of one layer's activations, with bootstrap intervals and a permutation p-value."""
    X = _as_matrix(X, keep_float=True)
    method, dims = parse_reduction(reduce)
    if method != "none":
        X = reduce_activations(X, reduce, seed)
    report = cluster_report(X, y, gamma=gamma, device=device)
    res = resample_indices(
        X, y, n_bootstrap=n_bootstrap, n_permutations=n_permutations, ci_level=ci_level,
        max_points=max_points, gamma=gamma, ci_method=ci_method, seed=seed,
    ) if (n_bootstrap or n_permutations) else None
    return _layer_result(
        report, res, hook=hook, layer=layer, pooling=pooling, class_names=class_names, gamma=gamma,
        n_bootstrap=n_bootstrap, n_permutations=n_permutations, ci_level=ci_level, ci_method=ci_method,
        reduction=method if method == "none" else f"{method}:{dims}", seed=seed,
    )


def _layer_result(
    report: ClusterReport, res: Resampling | None, *, hook: str, layer: int, pooling: str,
    class_names: Sequence[str] | None, gamma: float, n_bootstrap: int, n_permutations: int, ci_level: float,
    ci_method: str, reduction: str, seed: int,
) -> LayerAQI:
    names = list(class_names) if class_names is not None else [str(c) for c in report.classes]
    nan2 = (math.nan, math.nan)
    ci = res.ci if res else {name: nan2 for name in (*INDEX_NAMES, "aqi")}
    return LayerAQI(
        hook=hook, layer=layer, pooling=pooling, n=report.n,
        n_per_class={names[i]: c for i, c in enumerate(report.counts)},
        **report.indices, gamma=gamma, aqi_ci_low=ci["aqi"][0], aqi_ci_high=ci["aqi"][1], ci=ci, ci_level=ci_level,
        ci_method=ci_method, aqi_bootstrap_mean=res.bootstrap_mean["aqi"] if res else math.nan,
        p_value=res.p_value if res else None, n_bootstrap=n_bootstrap, n_permutations=n_permutations,
        resample_n=res.resample_n if res else 0, subsampled=res.subsampled if res else False,
        subsample_aqi=res.subsample_aqi if res else math.nan, min_between=report.min_between,
        max_diameter=report.max_diameter, reduction=reduction, seed=seed, notes=report.notes,
    )


def _open(cache_or_path):
    from geomprobe.activations.store import CacheFile, open_cache

    if isinstance(cache_or_path, CacheFile):
        return cache_or_path, False
    return open_cache(cache_or_path), True


def aqi_by_layer(
    cache_or_path: Any,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    label_pair: Sequence[str] | None = None,
    *,
    gamma: float = DEFAULT_GAMMA,
    n_bootstrap: int = 200,
    n_permutations: int = 200,
    max_points: int = 1000,
    ci_level: float = 0.95,
    ci_method: str = "basic",
    reduce: str | None = None,
    variants: Sequence[str] = (),
    seed: int = 0,
    device: str | torch.device | None = "auto",
    progress: bool = False,
    stream: bool | None = None,
) -> list[LayerAQI]:
    """AQI with intervals and p-value for each selected hook of a cache file (or open CacheFile).

    ``stream=True`` reads the cache in blocks (exact indices, equal to the in-memory result up to
    float64 summation order; see :mod:`geomprobe.activations.blocks`); ``None`` streams only when one
    layer's rows would not fit comfortably in the memory available.

    ``variants`` may add ``"chi-xb"`` (the paper's 0-100 variant, relative to these layers) to each
    record's ``variants``. Each layer uses the same seed, so its results do not depend on which
    other hooks were selected.
    """
    for v in variants:
        if v not in VARIANTS:
            raise GeomprobeError(f"unknown AQI variant {v!r}; use {', '.join(VARIANTS)}")
    cache, owned = _open(cache_or_path)
    try:
        chosen = cache.hooks_for(hooks)
        choice = choose_labels(cache.labels, cache.label_names, positive_label, label_pair)
        results = []
        iterator = chosen
        if progress:
            from tqdm import tqdm

            iterator = tqdm(chosen, desc="aqi", unit="layer", leave=False)
        from geomprobe.activations.blocks import needs_streaming
        from geomprobe.aqi.streamed import streamed_layer_aqi

        if stream is None:
            stream = needs_streaming(len(choice.rows), cache.d_model)
        if stream and reduce:
            raise GeomprobeError("--reduce needs the whole layer in memory; drop it to stream a large cache")
        for hook in iterator:
            if stream:
                try:
                    result = streamed_layer_aqi(
                        cache, hook, pooling, choice.rows, choice.y, class_names=choice.names, gamma=gamma,
                        n_bootstrap=n_bootstrap, n_permutations=n_permutations, max_points=max_points,
                        ci_level=ci_level, ci_method=ci_method, seed=seed, device=device,
                    )
                except GeomprobeError as exc:
                    raise GeomprobeError(f"{hook}/{pooling}: {exc}") from None
                results.append(result)
                continue
            X = cache.read(hook, pooling, rows=choice.rows)
            try:
                result = layer_aqi(
                    X, choice.y, hook=hook, layer=_layer_of(hook), pooling=pooling, class_names=choice.names,
                    gamma=gamma, n_bootstrap=n_bootstrap, n_permutations=n_permutations, max_points=max_points,
                    ci_level=ci_level, ci_method=ci_method, reduce=reduce, seed=seed, device=device,
                )
            except GeomprobeError as exc:
                raise GeomprobeError(f"{hook}/{pooling}: {exc}") from None
            results.append(result)
    finally:
        if owned:
            cache.close()
    if "chi-xb" in variants:
        scores = chi_xb_scores([r.calinski_harabasz for r in results], [r.xie_beni for r in results], gamma)
        for r, s in zip(results, scores):
            r.variants["chi-xb"] = float(s)
    return results


def _layer_of(hook: str) -> int:
    from geomprobe.core.hooks import hook_layer

    try:
        return hook_layer(hook)
    except GeomprobeError:
        return -1


# ---------------------------------------------------------------------------------------------
# Layer-wise pooled AQI: non-negative sparse layer weights learned on a training split
# ---------------------------------------------------------------------------------------------
def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1}; it sets small coordinates exactly to zero."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    ind = np.arange(1, len(v) + 1)
    rho = np.flatnonzero(u - css / ind > 0)[-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


class LayerWeightPooler:
    """Learn non-negative, sparse weights over layers that maximise class separation.

    Each layer is centred and scaled to unit RMS norm on the training data; the pooled
    representation is ``sum_l w_l * layer_l`` with ``w`` on the simplex. The weights maximise
    ``log(SSB(w) / SSW(w)) + sparsity * |w|^2`` (the Calinski-Harabasz ratio, a smooth separation
    measure that is a quadratic form in ``w``; the second term pulls towards few layers) by
    projected gradient ascent from several starts; the simplex projection zeroes weak layers.

    Fitted attributes: ``weights_`` (L,), ``means_`` (L, d), ``scales_`` (L,), ``objective_``.
    """

    def __init__(self, sparsity: float = 0.1, max_iter: int = 500, tol: float = 1e-9, min_weight: float = 1e-3):
        self.sparsity = sparsity
        self.max_iter = max_iter
        self.tol = tol
        self.min_weight = min_weight

    @staticmethod
    def _stack(layers: Sequence[Any]) -> list[np.ndarray]:
        mats = [_as_matrix(L, f"layer {i} activations") for i, L in enumerate(layers)]
        if not mats:
            raise GeomprobeError("no layers given; pass one (n, d) array per layer")
        shapes = {m.shape for m in mats}
        if len(shapes) != 1:
            raise GeomprobeError(f"all layers must have the same shape (n, d) to be pooled; got {sorted(shapes)}")
        return mats

    def _quadratic_forms(self, mats: list[np.ndarray], y: np.ndarray):
        classes = np.unique(y)
        L = len(mats)
        QB = np.zeros((L, L))
        QW = np.zeros((L, L))
        class_means = [[M[y == c].mean(0) for c in classes] for M in mats]
        counts = [int((y == c).sum()) for c in classes]
        for ci, c in enumerate(classes):
            mus = np.stack([class_means[l][ci] for l in range(L)])  # (L, d), data already centred
            QB += counts[ci] * (mus @ mus.T)
            rows = np.flatnonzero(y == c)
            for s in _row_chunks(len(rows), 2048):
                R = np.stack([mats[l][rows[s]] - class_means[l][ci] for l in range(L)])  # (L, b, d)
                R = R.reshape(L, -1)
                QW += R @ R.T
        return QB, QW

    def fit(self, layers: Sequence[Any], y: Any) -> "LayerWeightPooler":
        mats = self._stack(layers)
        codes, classes = _encode_labels(y, mats[0].shape[0])
        if len(classes) < 2:
            raise GeomprobeError("need two or more classes to learn layer weights")
        self.means_ = np.stack([M.mean(0) for M in mats])
        scales = np.array([math.sqrt(((M - mu) ** 2).sum(1).mean()) for M, mu in zip(mats, self.means_)])
        self.scales_ = np.where(scales > 0, scales, 1.0)
        Z = [(M - mu) / s for M, mu, s in zip(mats, self.means_, self.scales_)]
        QB, QW = self._quadratic_forms(Z, codes)
        L = len(mats)
        eps = 1e-12 * max(1.0, float(np.trace(QW)))

        def objective(w):
            b, wq = float(w @ QB @ w), float(w @ QW @ w) + eps
            return math.log(max(b, 1e-300) / wq) + self.sparsity * float(w @ w)

        def gradient(w):
            b, wq = float(w @ QB @ w), float(w @ QW @ w) + eps
            return 2 * QB @ w / max(b, 1e-300) - 2 * QW @ w / wq + 2 * self.sparsity * w

        single = np.array([objective(np.eye(L)[l]) for l in range(L)])
        starts = [np.full(L, 1.0 / L)] + [np.eye(L)[l] for l in np.argsort(single)[::-1][: min(3, L)]]
        best_w, best_f = None, -math.inf
        for w in starts:
            f = objective(w)
            step = 1.0
            for _ in range(self.max_iter):
                g = gradient(w)
                while step > 1e-12:
                    w_new = _project_simplex(w + step * g)
                    f_new = objective(w_new)
                    if f_new >= f:
                        break
                    step *= 0.5
                else:
                    break
                done = f_new - f <= self.tol * max(1.0, abs(f))
                w, f = w_new, f_new
                step *= 2.0
                if done:
                    break
            if f > best_f:
                best_w, best_f = w, f
        w = np.where(best_w >= self.min_weight, best_w, 0.0)
        self.weights_ = w / w.sum()
        self.objective_ = objective(self.weights_)
        self.single_layer_objective_ = single
        return self

    def transform(self, layers: Sequence[Any]) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise GeomprobeError("LayerWeightPooler is not fitted; call fit first")
        mats = self._stack(layers)
        if len(mats) != len(self.weights_):
            raise GeomprobeError(f"fitted on {len(self.weights_)} layers, got {len(mats)}")
        out = np.zeros_like(mats[0])
        for w, M, mu, s in zip(self.weights_, mats, self.means_, self.scales_):
            if w > 0:
                out += (w / s) * (M - mu)
        return out


@dataclass
class PooledAQI:
    hooks: list[str]
    layers: list[int]
    weights: list[float]
    pooling: str
    n_train: int
    n_test: int
    train_fraction: float
    objective: str
    heldout: dict[str, float]  # indices + aqi of the pooled test representation
    train: dict[str, float]
    best_single_hook: str  # the single layer best on the training objective
    best_single_heldout_aqi: float
    heldout_aqi_by_layer: list[float]
    sparsity: float
    seed: int
    gamma: float
    dtype: str = METRIC_DTYPE
    notes: list[str] = field(default_factory=list)

    @property
    def heldout_aqi(self) -> float:
        return self.heldout["aqi"]

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["heldout_aqi"] = self.heldout_aqi
        record["weights_by_hook"] = {h: w for h, w in zip(self.hooks, self.weights) if w > 0}
        return record


def pooled_aqi_arrays(
    layers: Mapping[str, Any] | Sequence[Any],
    y: Any,
    *,
    pooling: str = "",
    train_fraction: float = 0.5,
    sparsity: float = 0.1,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> PooledAQI:
    """Learn layer weights on a stratified training split; report AQI of the pooled held-out split."""
    from sklearn.model_selection import train_test_split

    if isinstance(layers, Mapping):
        hooks = list(layers)
        mats = [layers[h] for h in hooks]
    else:
        mats = list(layers)
        hooks = [f"layer{i}" for i in range(len(mats))]
    mats = LayerWeightPooler._stack(mats)
    codes, classes = _encode_labels(y, mats[0].shape[0])
    counts = np.bincount(codes, minlength=len(classes))
    if len(classes) < 2:
        raise GeomprobeError("need two or more classes for the pooled AQI")
    if counts.min() < 4:
        raise GeomprobeError(
            f"class {classes[int(np.argmin(counts))]!r} has {int(counts.min())} rows; the pooled AQI needs at least 4 per class (2 to train, 2 held out)"
        )
    if not 0 < train_fraction < 1:
        raise GeomprobeError(f"train_fraction must be between 0 and 1; got {train_fraction}")
    idx = np.arange(len(codes))
    try:
        tr, te = train_test_split(idx, train_size=train_fraction, stratify=codes, random_state=seed)
    except ValueError as exc:
        raise GeomprobeError(f"cannot split {len(codes)} rows with train_fraction={train_fraction}: {exc}") from None
    tr, te = np.sort(tr), np.sort(te)
    pooler = LayerWeightPooler(sparsity=sparsity).fit([M[tr] for M in mats], codes[tr])
    train_report = cluster_report(pooler.transform([M[tr] for M in mats]), codes[tr], gamma=gamma, device=device)
    test_report = cluster_report(pooler.transform([M[te] for M in mats]), codes[te], gamma=gamma, device=device)
    by_layer = [cluster_report(M[te], codes[te], gamma=gamma, device=device).aqi for M in mats]
    best = int(np.argmax(pooler.single_layer_objective_))
    return PooledAQI(
        hooks=hooks, layers=[_layer_of(h) for h in hooks], weights=pooler.weights_.tolist(), pooling=pooling,
        n_train=len(tr), n_test=len(te), train_fraction=train_fraction,
        objective="log(SSB/SSW) + sparsity*|w|^2 on the training split (layers centred, unit RMS)",
        heldout=test_report.indices, train=train_report.indices, best_single_hook=hooks[best],
        best_single_heldout_aqi=by_layer[best], heldout_aqi_by_layer=by_layer, sparsity=sparsity, seed=seed,
        gamma=gamma, notes=test_report.notes,
    )


def pooled_aqi(
    cache_or_path: Any,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    label_pair: Sequence[str] | None = None,
    *,
    train_fraction: float = 0.5,
    sparsity: float = 0.1,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> PooledAQI:
    """The paper's layer-wise pooled AQI over a cache's hooks (same label choice as :func:`aqi_by_layer`)."""
    cache, owned = _open(cache_or_path)
    try:
        chosen = cache.hooks_for(hooks)
        choice = choose_labels(cache.labels, cache.label_names, positive_label, label_pair)
        layers = {hook: cache.read(hook, pooling, rows=choice.rows) for hook in chosen}
    finally:
        if owned:
            cache.close()
    return pooled_aqi_arrays(
        layers, choice.y, pooling=pooling, train_fraction=train_fraction, sparsity=sparsity, gamma=gamma,
        seed=seed, device=device,
    )


def cache_metadata(cache_or_path: Any) -> dict[str, Any]:
    """Provenance for output records: model id, revision and the cache's storage dtype."""
    cache, owned = _open(cache_or_path)
    try:
        attrs = cache.attrs
        return {
            "cache": str(Path(cache.path)),
            "model_id": cache.model_id,
            "model_revision": str(attrs.get("model_revision", "")),
            "model_dtype": str(attrs.get("model_dtype", "")),
            "store_dtype": str(attrs.get("store_dtype", "float32")),
            "label_names": list(cache.label_names),
        }
    finally:
        if owned:
            cache.close()
