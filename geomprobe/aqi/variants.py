"""The AQI paper's other published forms: the 0-100 CHI/XB variant and reduced activations.

Both are for reproducing published numbers; the default AQI (:mod:`geomprobe.aqi.indices`) needs
neither (docs/aqi.md says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geomprobe.aqi.indices import DEFAULT_GAMMA
from geomprobe.aqi.validation import as_matrix
from geomprobe.core.errors import GeomprobeError

VARIANTS = ("dbs-dunn", "chi-xb")


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
    X = as_matrix(X)
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
