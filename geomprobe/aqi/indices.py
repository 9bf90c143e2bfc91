"""Cluster-separation indices and the Alignment Quality Index (AQI), with a registry of indices.

The four indices of the AQI paper are computed on raw activations, in float64:

* Davies-Bouldin (DBS, lower is better): mean over clusters of the worst ratio
  ``(S_i + S_j) / |c_i - c_j|`` with ``S_i`` the mean distance of cluster i's points to its centroid.
* Dunn (DI, higher is better): smallest distance between two points of different clusters divided
  by the largest distance between two points of one cluster (Euclidean, exact; see
  :mod:`geomprobe.aqi.pairwise`).
* Xie-Beni, hard labels (XBI, lower is better): ``SSW / (n * min_{i<j} |c_i - c_j|^2)``.
* Calinski-Harabasz (CHI, higher is better): ``(SSB / (k-1)) / (SSW / (n-k))``.

``AQI = gamma / (1 + DBS) + (1 - gamma) * DI / (1 + DI)`` (``gamma = 0.5``) lies in [0, 1] and is
invariant to scaling, rotating and translating the activations, so it compares across models.

Every index is a function of :class:`~geomprobe.aqi.stats.ClusterStats`, registered by name in
:data:`INDICES`; :func:`register_index` adds one, and :func:`cluster_report` reports it in
``extra``. The in-memory and streamed paths both end in :func:`report_from_stats`.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.aqi.pairwise import pair_extremes
from geomprobe.aqi.stats import ClusterStats, cluster_stats, global_mean, split_clusters
from geomprobe.aqi.validation import validate_clusters
from geomprobe.core.errors import GeomprobeError

INDEX_NAMES = ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz")  # the paper's four, always reported
DEFAULT_GAMMA = 0.5
METRIC_DTYPE = "float64"

IndexFunction = Callable[[ClusterStats], float]
INDICES: dict[str, IndexFunction] = {}


@dataclass(frozen=True)
class IndexInfo:
    """How outputs show a registered index: a short label, which way is better, a log axis or not."""

    label: str
    better: str = ""  # "higher", "lower" or "" (neither)
    log_scale: bool = False

    @property
    def title(self) -> str:
        return f"{self.label} ({self.better} = better)" if self.better else self.label


INDEX_INFO: dict[str, IndexInfo] = {}


class DegenerateClustersWarning(UserWarning):
    """An index took one of its documented limit values (inf or 0) because of degenerate geometry."""


def register_index(
    name: str, *, label: str | None = None, better: str = "", log_scale: bool = False
) -> Callable[[IndexFunction], IndexFunction]:
    """Decorator: add ``fn(stats: ClusterStats) -> float`` to :data:`INDICES` under ``name``.

    :func:`cluster_report` then reports it in ``ClusterReport.extra``, :func:`cluster_indices` in its
    dictionary, and every per-layer record (:class:`~geomprobe.aqi.LayerAQI` ``extra``, with a bootstrap
    interval in ``ci``) carries it to ``geomprobe aqi``'s table, JSON and plot and to the audit. Use the
    statistics' properties (``within_scatter``, ``between_scatter``, ``centroid_distances``,
    ``min_between_sq``, ...) so every path computes it the same way. ``label``, ``better``
    (``"higher"``/``"lower"``) and ``log_scale`` only change how plots and tables show it.
    """
    if not name.isidentifier():
        raise GeomprobeError(f"index name {name!r} must be a Python identifier, e.g. 'my_ratio'")
    if name in INDICES or name == "aqi":
        raise GeomprobeError(f"a cluster index named {name!r} is already registered; choose another name")
    if better not in ("", "higher", "lower"):
        raise GeomprobeError(f"better={better!r} for index {name!r}; use 'higher', 'lower' or ''")

    def decorator(fn: IndexFunction) -> IndexFunction:
        INDICES[name] = fn
        INDEX_INFO[name] = IndexInfo(label or name, better, log_scale)
        return fn

    return decorator


def unregister_index(name: str) -> None:
    """Remove an index added with :func:`register_index` (the paper's four stay)."""
    if name in INDEX_NAMES:
        raise GeomprobeError(f"{name!r} is one of the four AQI indices and cannot be removed")
    if name not in INDICES:
        raise GeomprobeError(f"no cluster index named {name!r} is registered; registered: {', '.join(INDICES)}")
    del INDICES[name]
    INDEX_INFO.pop(name, None)


def extra_index_names() -> tuple[str, ...]:
    """The registered indices beyond the paper's four, in registration order."""
    return tuple(name for name in INDICES if name not in INDEX_NAMES)


# ---------------------------------------------------------------------------------------------
# The paper's four indices, from the shared statistics
# ---------------------------------------------------------------------------------------------
@register_index("davies_bouldin", label="Davies-Bouldin", better="lower")
def _davies_bouldin(stats: ClusterStats) -> float:
    cdist, off = stats.centroid_distances, stats.off_diagonal
    # coinciding centroids are the worst case (ratio inf), not skipped
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = stats.mean_dist[:, None] + stats.mean_dist[None, :]
        ratio = np.where(cdist > 0, spread / np.where(cdist > 0, cdist, 1.0), np.inf)
    ratio[~off] = -np.inf
    return float(ratio.max(axis=1).mean())


@register_index("dunn", label="Dunn", better="higher")
def _dunn(stats: ClusterStats) -> float:
    min_between_sq, max_diameter_sq = stats.min_between_sq, stats.max_diameter_sq
    if min_between_sq == 0:
        return 0.0
    if max_diameter_sq == 0:
        return math.inf
    return math.sqrt(min_between_sq) / math.sqrt(max_diameter_sq)


@register_index("xie_beni", label="Xie-Beni", better="lower", log_scale=True)
def _xie_beni(stats: ClusterStats) -> float:
    min_c_sq = float((stats.centroid_distances[stats.off_diagonal] ** 2).min())
    return stats.within_scatter / (stats.n * min_c_sq) if min_c_sq > 0 else math.inf


@register_index("calinski_harabasz", label="Calinski-Harabasz", better="higher", log_scale=True)
def _calinski_harabasz(stats: ClusterStats) -> float:
    ssb, ssw, n, k = stats.between_scatter, stats.within_scatter, stats.n, stats.k
    if ssw > 0:
        return ssb * (n - k) / (ssw * (k - 1))
    return math.inf if ssb > 0 else 0.0


def degeneracy_notes(stats: ClusterStats) -> list[str]:
    """Why an index took a limit value (empty for non-degenerate clusters)."""
    notes = []
    ssw, ssb = stats.within_scatter, stats.between_scatter
    if ssw == 0 and ssb == 0:
        notes.append("constant activations (every point identical): the classes are not separated, AQI = 0")
    if (stats.centroid_distances[stats.off_diagonal] == 0).any():
        notes.append("two cluster centroids coincide: Davies-Bouldin and Xie-Beni are inf")
    if ssw == 0 and ssb > 0:
        notes.append("zero within-cluster scatter: Calinski-Harabasz is inf")
    if stats.has_extremes:
        if stats.min_between_sq == 0:
            notes.append("a point of one cluster coincides with a point of another: Dunn is 0")
        elif stats.max_diameter_sq == 0:
            notes.append("every cluster is a single repeated point: Dunn is inf (perfect separation)")
    return notes


def aqi_from_indices(davies_bouldin: float, dunn: float, gamma: float = DEFAULT_GAMMA) -> float:
    """``gamma / (1 + DBS) + (1 - gamma) * DI / (1 + DI)``, with the limits DBS = inf -> 0, DI = inf -> 1."""
    if not 0.0 <= gamma <= 1.0:
        raise GeomprobeError(f"gamma must be in [0, 1]; got {gamma}")
    dbs_term = 0.0 if math.isinf(davies_bouldin) else 1.0 / (1.0 + davies_bouldin)
    dunn_term = 1.0 if math.isinf(dunn) else dunn / (1.0 + dunn)
    return gamma * dbs_term + (1.0 - gamma) * dunn_term


def aqi_indices(stats: ClusterStats, gamma: float = DEFAULT_GAMMA) -> dict[str, float]:
    """The four indices and AQI (statistics with Dunn's extremes); shared by reports and resampling."""
    indices = {name: INDICES[name](stats) for name in INDEX_NAMES}
    indices["aqi"] = aqi_from_indices(indices["davies_bouldin"], indices["dunn"], gamma)
    return indices


def all_indices(stats: ClusterStats, gamma: float = DEFAULT_GAMMA) -> dict[str, float]:
    """:func:`aqi_indices` plus every registered index: what a report and each bootstrap replicate score."""
    values = aqi_indices(stats, gamma)
    values.update({name: float(INDICES[name](stats)) for name in extra_index_names()})
    return values


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
@dataclass
class ClusterReport:
    """All four indices, AQI and the quantities behind them (distances in the input's units).

    ``extra``: the value of every index registered beyond the four (see :func:`register_index`).
    """

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
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def indices(self) -> dict[str, float]:
        """The four indices and AQI (the fields every AQI record carries)."""
        return {name: getattr(self, name) for name in (*INDEX_NAMES, "aqi")}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    to_record = to_dict  # the name the CLI and plots have used


def report_from_stats(stats: ClusterStats, classes: list, gamma: float = DEFAULT_GAMMA) -> ClusterReport:
    """The report of statistics with Dunn's extremes: the combine step of every AQI path."""
    values = all_indices(stats, gamma)
    indices = {name: values[name] for name in (*INDEX_NAMES, "aqi")}
    extra = {name: values[name] for name in extra_index_names()}
    between_sq, diameter_sq = stats.extremes()
    between = np.sqrt(between_sq)
    np.fill_diagonal(between, 0.0)
    return ClusterReport(
        **indices,
        gamma=gamma,
        n=stats.n,
        classes=classes,
        counts=stats.counts.tolist(),
        min_between=math.sqrt(stats.min_between_sq),
        max_diameter=math.sqrt(stats.max_diameter_sq),
        between=between.tolist(),
        diameters=np.sqrt(diameter_sq).tolist(),
        notes=degeneracy_notes(stats),
        extra=extra,
    )


def cluster_report(
    X: Any, labels: Any, *, gamma: float = DEFAULT_GAMMA, device: str | torch.device | None = "auto", block: int | None = None
) -> ClusterReport:
    """Exact DBS, Dunn, XBI, CHI and AQI of ``X`` (n, d) grouped by ``labels`` (two or more clusters)."""
    X, codes, classes = validate_clusters(X, labels)
    mu = global_mean(X)
    stats = cluster_stats(split_clusters(X, codes, len(classes), shift=mu))  # centred: accurate sums
    # Dunn's pairs from the rows as given: their differences are exact, centred ones are rounded
    extremes = pair_extremes(split_clusters(X, codes, len(classes), shift=None), stats.centroids + mu.numpy(), device, block)
    return report_from_stats(stats.with_extremes(extremes.between_sq, extremes.diameter_sq), classes, gamma)


def cluster_indices(
    X: Any, labels: Any, *, gamma: float = DEFAULT_GAMMA, device: str | torch.device | None = "auto", block: int | None = None
) -> dict[str, float]:
    """``{davies_bouldin, dunn, xie_beni, calinski_harabasz, aqi}`` (+ registered indices), exact, float64.

    DBS and CHI equal scikit-learn's scores on non-degenerate data; Dunn is the classic
    nearest-cross-pair / largest-diameter ratio; Xie-Beni uses hard labels. Degenerate geometry
    gives the documented limit values with a :class:`DegenerateClustersWarning`.
    """
    report = cluster_report(X, labels, gamma=gamma, device=device, block=block)
    if report.notes:
        warnings.warn("; ".join(report.notes), DegenerateClustersWarning, stacklevel=2)
    return {**report.indices, **report.extra}


def _centroid_index(name: str, X: Any, labels: Any) -> float:
    """An index that needs no pairwise search (Dunn does), from the statistics alone."""
    X, codes, classes = validate_clusters(X, labels)
    return INDICES[name](cluster_stats(split_clusters(X, codes, len(classes))))


def davies_bouldin(X: Any, labels: Any) -> float:
    return _centroid_index("davies_bouldin", X, labels)


def calinski_harabasz(X: Any, labels: Any) -> float:
    return _centroid_index("calinski_harabasz", X, labels)


def xie_beni(X: Any, labels: Any) -> float:
    return _centroid_index("xie_beni", X, labels)


def dunn_index(X: Any, labels: Any, *, device: str | torch.device | None = "auto", block: int | None = None) -> float:
    return cluster_report(X, labels, device=device, block=block).dunn
