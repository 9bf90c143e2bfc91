"""Input checks for the AQI stage: activation matrices, label encoding, cluster sizes, label choice.

Every AQI entry point (in memory, streamed, resampling, pooled) goes through these, so a bad
input gets the same one-line :class:`GeomprobeError` whichever path reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.labels import BinaryLabels, binary_labels


def as_matrix(X: Any, what: str = "activations", keep_float: bool = False) -> np.ndarray:
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


def encode_labels(labels: Any, n: int) -> tuple[np.ndarray, list]:
    """``(codes, classes)``: int64 codes 0..k-1 in sorted class order, one per row of ``n``."""
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


def check_clusters(codes: np.ndarray, classes: list, min_cluster_size: int = 1) -> np.ndarray:
    """Refuse clusterings the indices are undefined on; return the rows per cluster."""
    if len(classes) < 2:
        raise GeomprobeError(
            f"need two or more clusters; all {len(codes)} rows have label {classes[0]!r} (check the labels or --positive-label)"
        )
    counts = np.bincount(codes, minlength=len(classes))
    if counts.max() < 2:
        raise GeomprobeError(
            "every cluster has a single point, so Calinski-Harabasz and Dunn are undefined; "
            "give at least one cluster two or more points"
        )
    if counts.min() < min_cluster_size:
        small = classes[int(np.argmin(counts))]
        raise GeomprobeError(
            f"cluster {small!r} has {int(counts.min())} point(s); resampling needs at least {min_cluster_size} per cluster"
        )
    return counts


def validate_clusters(X: Any, labels: Any, min_cluster_size: int = 1) -> tuple[np.ndarray, np.ndarray, list]:
    """``(X, codes, classes)`` for the in-memory indices; float32 input stays float32."""
    X = as_matrix(X, keep_float=True)
    codes, classes = encode_labels(labels, X.shape[0])
    check_clusters(codes, classes, min_cluster_size)
    return X, codes, classes


def choose_labels(
    labels: np.ndarray, label_names: Sequence[str], positive_label: str | None = None, label_pair: Sequence[str] | None = None
) -> BinaryLabels:
    """Pick the two classes (see :func:`geomprobe.core.labels.binary_labels`); unlabelled rows are dropped."""
    return binary_labels(labels, label_names, positive_label, label_pair)
