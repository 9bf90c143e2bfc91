"""The paper's layer-wise pooled AQI: non-negative sparse layer weights learned on a training split.

:class:`LayerWeightPooler` learns the weights (scikit-learn style fit/transform);
:func:`pooled_aqi_arrays` scores the pooled held-out split with :func:`cluster_report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.aqi.indices import DEFAULT_GAMMA, METRIC_DTYPE, cluster_report
from geomprobe.aqi.layers import layer_index
from geomprobe.aqi.stats import row_chunks
from geomprobe.aqi.validation import as_matrix, encode_labels
from geomprobe.core.errors import GeomprobeError


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
        mats = [as_matrix(L, f"layer {i} activations") for i, L in enumerate(layers)]
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
            for s in row_chunks(len(rows), 2048):
                R = np.stack([mats[l][rows[s]] - class_means[l][ci] for l in range(L)])  # (L, b, d)
                R = R.reshape(L, -1)
                QW += R @ R.T
        return QB, QW

    def fit(self, layers: Sequence[Any], y: Any) -> LayerWeightPooler:
        mats = self._stack(layers)
        codes, classes = encode_labels(y, mats[0].shape[0])
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
        best_w, best_f = starts[0], -math.inf
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
    """Learned layer weights and the AQI of the pooled representation on the held-out split."""

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

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["heldout_aqi"] = self.heldout_aqi
        record["weights_by_hook"] = {h: w for h, w in zip(self.hooks, self.weights) if w > 0}
        return record

    to_record = to_dict  # the name the CLI and plots have used


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
    codes, classes = encode_labels(y, mats[0].shape[0])
    counts = np.bincount(codes, minlength=len(classes))
    if len(classes) < 2:
        raise GeomprobeError("need two or more classes for the pooled AQI")
    if counts.min() < 4:
        raise GeomprobeError(
            f"class {classes[int(np.argmin(counts))]!r} has {int(counts.min())} rows; "
            "the pooled AQI needs at least 4 per class (2 to train, 2 held out)"
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
        hooks=hooks,
        layers=[layer_index(h) for h in hooks],
        weights=pooler.weights_.tolist(),
        pooling=pooling,
        n_train=len(tr),
        n_test=len(te),
        train_fraction=train_fraction,
        objective="log(SSB/SSW) + sparsity*|w|^2 on the training split (layers centred, unit RMS)",
        heldout=test_report.indices,
        train=train_report.indices,
        best_single_hook=hooks[best],
        best_single_heldout_aqi=by_layer[best],
        heldout_aqi_by_layer=by_layer,
        sparsity=sparsity,
        seed=seed,
        gamma=gamma,
        notes=test_report.notes,
    )
