"""Fit one linear probe per layer for every layer at once, for any registered probe kind.

All layers are solved together on batched tensors: ``X`` is ``(L, N, d)`` and every kind returns
``(L, d)`` coefficients. :func:`fit_layers` checks the data, standardises it if asked, and hands it
to the kind's fit function from the registry (:mod:`geomprobe.probes.kinds`; the built-in kinds and
their solvers are in :mod:`geomprobe.probes.builtin` and :mod:`geomprobe.probes.solvers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import geomprobe.probes.builtin  # noqa: F401  (registers the built-in kinds)
from geomprobe.core.errors import GeomprobeError
from geomprobe.probes.kinds import ProbeData, params_record, probe_kind


@dataclass
class LayerFit:
    """Per-layer linear probes: ``score = ((x - mean) / scale) . coef + intercept``.

    ``coef`` lives in the standardised space the probe was fitted in; :attr:`direction` and
    :attr:`raw_intercept` give the same score on raw activations (``x . direction + raw_intercept``).
    """

    method: str
    coef: np.ndarray  # (L, d) float64
    intercept: np.ndarray  # (L,)
    mean: np.ndarray  # (L, d)
    scale: np.ndarray  # (L, d)
    params: dict[str, Any] = field(default_factory=dict)
    n_iter: np.ndarray | None = None  # (L,) logistic only
    converged: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return int(self.coef.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.coef.shape[1])

    @property
    def direction(self) -> np.ndarray:
        """(L, d) raw-activation-space weight vectors (``coef / scale``)."""
        return self.coef / self.scale

    @property
    def raw_intercept(self) -> np.ndarray:
        return self.intercept - np.sum(self.mean / self.scale * self.coef, axis=-1)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Scores ``(L, N)`` for ``X`` of shape ``(L, N, d)``, computed in float64."""
        X = np.asarray(X)
        if X.ndim != 3 or X.shape[0] != self.n_layers or X.shape[2] != self.d_model:
            raise GeomprobeError(f"expected activations of shape (L={self.n_layers}, N, d={self.d_model}); got {X.shape}")
        out = np.empty(X.shape[:2], dtype=np.float64)
        for layer in range(self.n_layers):
            out[layer] = X[layer].astype(np.float64, copy=False) @ self.direction[layer] + self.raw_intercept[layer]
        return out

    def layer(self, index: int) -> LayerFit:
        sl = slice(index, index + 1)
        return LayerFit(
            self.method,
            self.coef[sl],
            self.intercept[sl],
            self.mean[sl],
            self.scale[sl],
            dict(self.params),
            None if self.n_iter is None else self.n_iter[sl],
            None if self.converged is None else self.converged[sl],
        )


# -- validation ------------------------------------------------------------------------------


def check_training_data(X: np.ndarray | torch.Tensor, y: np.ndarray) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    if X.ndim != 3:
        raise GeomprobeError(f"layer activations must be 3-D (layers, samples, d_model); got shape {tuple(X.shape)}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != X.shape[1]:
        raise GeomprobeError(f"{len(y)} labels for {X.shape[1]} samples; give one 0/1 label per sample")
    if not np.all(np.isin(y, (0, 1))):
        raise GeomprobeError("labels passed to fit_layers must be 0 (negative) or 1 (positive)")
    counts = np.bincount(y.astype(np.int64), minlength=2)
    if counts.min() == 0:
        present = "positive" if counts[1] else "negative"
        raise GeomprobeError(
            f"only one class ({present}, {counts.max()} samples) in the training data; a probe needs both classes"
        )
    if counts.min() < 2:
        raise GeomprobeError(f"only {counts.min()} sample in one class; a probe needs at least 2 per class")
    finite = torch.isfinite(X).all() if isinstance(X, torch.Tensor) else np.isfinite(X).all()
    if not bool(finite):
        raise GeomprobeError("activations contain NaN or inf; recreate the cache (check the model dtype) or drop those rows")
    return X, y.astype(np.int64)


def _pair_groups(pairs: np.ndarray | None, n: int) -> np.ndarray | None:
    if pairs is None:
        return None
    pairs = np.asarray(pairs)
    if pairs.shape != (n,):
        raise GeomprobeError(f"pairs has shape {pairs.shape}; give one pair id per sample ({n}), -1 for none")
    return pairs.astype(np.int64)


# -- the batched solvers ---------------------------------------------------------------------


def _standardize(X: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L, _, d = X.shape
    if not standardize:
        return X, torch.zeros(L, d, dtype=X.dtype, device=X.device), torch.ones(L, d, dtype=X.dtype, device=X.device)
    mean = X.mean(dim=1)
    std = X.std(dim=1, unbiased=False)
    # Constant features get scale 1, as StandardScaler does.
    scale = torch.where(std < 10 * torch.finfo(X.dtype).eps * mean.abs().clamp_min(1.0), torch.ones_like(std), std)
    return (X - mean[:, None, :]) / scale[:, None, :], mean, scale


def _centre_scale(X: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred copy of X in its own dtype plus float64 (mean, scale); scaling is left to the solver."""
    L, _, d = X.shape
    if not standardize:
        ones = torch.ones(L, d, dtype=torch.float64, device=X.device)
        return X, torch.zeros_like(ones), ones
    mean = X.mean(dim=1, dtype=torch.float64) if X.dtype != torch.float64 else X.mean(dim=1)
    Xc = X - mean.to(X.dtype)[:, None, :]
    std = torch.linalg.vector_norm(Xc, dim=1, dtype=torch.float64) / np.sqrt(X.shape[1])
    scale = torch.where(std < 1e-12 * mean.abs().clamp_min(1.0), torch.ones_like(std), std)
    return Xc, mean, scale


def _torch_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        # float64 on CPU keeps agreement with scikit-learn tight; float32 on GPU for speed.
        return torch.float64 if device.type == "cpu" else torch.float32
    return {"float64": torch.float64, "float32": torch.float32}[str(dtype)]


def fit_layers(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray,
    method: str = "logistic",
    *,
    pairs: np.ndarray | None = None,
    params: Any = None,
    standardize: bool | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    **param_values: Any,
) -> LayerFit:
    """Fit one probe per layer on ``X`` (L, N, d) with 0/1 labels ``y`` (N,), all layers at once.

    ``method``: a registered probe kind (:func:`geomprobe.probes.register_probe_kind`). Its parameters
    come as ``params`` (the kind's params dataclass or a dict) and/or keywords (``C=0.5``); a key the
    kind does not have is refused. ``standardize`` defaults to the kind's choice (True for logistic,
    False for the closed-form kinds, as in the reference recipes). ``pairs`` (N,) holds pair ids
    (-1 = unpaired), used by kinds that need pairs (pca-diff-uncentered).
    """
    from geomprobe.core.device import resolve_device

    kind = probe_kind(method, depth=2)
    chosen = kind.make_params(params, **param_values)
    X, y = check_training_data(X, y)
    groups = _pair_groups(pairs, X.shape[1])
    dev = resolve_device(device)
    tdtype = _torch_dtype(dtype, dev)
    if standardize is None:
        standardize = kind.standardize
    yt = torch.as_tensor(y, device=dev)
    if kind.scales_itself:
        # Keep the cache's float dtype (float32) for the passes over X; parameters are float64.
        Xt = torch.as_tensor(X).to(device=dev)
        if not Xt.is_floating_point():
            Xt = Xt.to(tdtype)
        Xs, mean, scale = _centre_scale(Xt, bool(standardize))
    else:
        Xt = torch.as_tensor(X).to(device=dev, dtype=tdtype)
        Xs, mean, scale = _standardize(Xt, bool(standardize))
    result = kind.fit(ProbeData(Xs, yt, groups, scale, tdtype), chosen)
    record: dict[str, Any] = {"standardize": bool(standardize), **params_record(chosen), **result.info}
    as_np = lambda t: t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    L, d = Xs.shape[0], Xs.shape[2]
    coef, intercept = as_np(result.coef), as_np(result.intercept)
    if coef.shape != (L, d) or intercept.shape != (L,):
        raise GeomprobeError(
            f"probe kind {kind.name!r} returned coef {coef.shape} and intercept {intercept.shape}; "
            f"its fit function must return ({L}, {d}) and ({L},)"
        )
    return LayerFit(kind.name, coef, intercept, as_np(mean), as_np(scale), record, result.n_iter, result.converged)


class ProbeSweep:
    """scikit-learn-style wrapper around :func:`fit_layers`: one probe per layer, fitted together.

    ``method`` any registered probe kind, ``params`` its parameters (the kind's params dataclass or a
    dict; checked when fitting). ``fit(X, y)`` with ``X`` (L, N, d); ``decision_function(X)`` and
    ``predict_proba`` give per-layer outputs (L, N); ``score(X, y)`` gives per-layer AUROC (L,).
    """

    def __init__(
        self,
        method: str = "logistic",
        *,
        params: Any = None,
        standardize: bool | None = None,
        device: str = "auto",
        dtype: str | None = None,
    ) -> None:
        self.method = method
        self.params = params
        self.standardize = standardize
        self.device = device
        self.dtype = dtype

    def fit(self, X, y, pairs=None) -> ProbeSweep:
        self.fit_ = fit_layers(
            X, y, self.method, pairs=pairs, params=self.params, standardize=self.standardize, device=self.device, dtype=self.dtype
        )
        self.coef_, self.intercept_ = self.fit_.coef, self.fit_.intercept
        self.mean_, self.scale_ = self.fit_.mean, self.fit_.scale
        self.direction_ = self.fit_.direction
        return self

    def decision_function(self, X) -> np.ndarray:
        return self.fit_.decision_function(X)

    def predict_proba(self, X) -> np.ndarray:
        """(L, N) probability of the positive class."""
        from scipy.special import expit

        return expit(self.decision_function(X))

    def score(self, X, y) -> np.ndarray:
        from geomprobe.probes.metrics import auroc

        return np.asarray(auroc(self.decision_function(X), np.asarray(y)))
