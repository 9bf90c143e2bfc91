"""Fit one linear probe per layer for every layer at once.

All layers are solved together on batched tensors: ``X`` is ``(L, N, d)`` and every method
returns ``(L, d)`` coefficients. Logistic regression uses a batched L-BFGS in which each layer
keeps its own curvature history, step length and stopping test (the problems are independent,
so sharing one optimiser state across layers would only slow convergence). Mean difference,
covariance-adjusted mean difference (LDA) and PCA of paired differences are closed form.

The logistic objective is scikit-learn's, divided by ``C * sum(w)`` (same optimum)::

    mean_i w_i log(1 + exp(-s_i x_i . b)) + ||b||^2 / (2 C sum(w))      s_i = +1 / -1

so with ``standardize=True`` and ``fit_intercept=False`` the result equals
``StandardScaler`` followed by ``LogisticRegression(C=C, fit_intercept=False)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError

METHODS = ("logistic", "mean-diff", "lda", "pca-diff")
_ALIASES = {
    "logreg": "logistic", "lr": "logistic", "mean_diff": "mean-diff", "meandiff": "mean-diff",
    "diff-of-means": "mean-diff", "dim": "mean-diff", "covariance-adjusted": "lda", "pca": "pca-diff",
    "pca_diff": "pca-diff", "lat": "pca-diff", "repe": "pca-diff",
    "pca-center": "pca-diff",  # steering's name for the same (uncentred) direction
}


def canonical_method(method: str) -> str:
    """The probe method a name or alias stands for (``pca-diff`` is the uncentred PCA of pair
    differences here and in :mod:`geomprobe.steering`, where it is also called ``pca-center``)."""
    name = _ALIASES.get(str(method).lower(), str(method).lower())
    if name not in METHODS:
        hint = "; the centred PCA is a steering method only" if name == "pca-diff-centered" else ""
        raise GeomprobeError(f"unknown probe method {method!r}; use one of {', '.join(METHODS)}{hint}")
    return name


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
            raise GeomprobeError(
                f"expected activations of shape (L={self.n_layers}, N, d={self.d_model}); got {X.shape}"
            )
        out = np.empty(X.shape[:2], dtype=np.float64)
        for layer in range(self.n_layers):
            out[layer] = X[layer].astype(np.float64, copy=False) @ self.direction[layer] + self.raw_intercept[layer]
        return out

    def layer(self, index: int) -> LayerFit:
        sl = slice(index, index + 1)
        return LayerFit(
            self.method, self.coef[sl], self.intercept[sl], self.mean[sl], self.scale[sl], dict(self.params),
            None if self.n_iter is None else self.n_iter[sl], None if self.converged is None else self.converged[sl],
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


def batched_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    C: float = 0.1,
    fit_intercept: bool = False,
    scale: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve L independent L2-regularised logistic regressions with batched L-BFGS.

    ``X`` (L, N, d) in any float dtype (products are done in it), ``y`` (N,) in {0, 1}; the
    features are ``X / scale`` (``scale`` (L, d), folded into the weights so X is never copied).
    Returns float64 ``coef (L, d)`` (on the scaled features), ``intercept (L,)``, ``n_iter (L,)``
    and ``converged (L,)``. A layer stops when its largest gradient entry is below ``tol``
    (the objective is a per-sample mean, as in scikit-learn, so ``tol`` matches its ``tol``).
    Each iteration reads X twice: once for the search direction's margins (the line search
    then moves along them without touching X) and once for the gradient.
    """
    if C <= 0:
        raise GeomprobeError(f"C must be positive; got {C}")
    L, N, d = X.shape
    xdtype, device = X.dtype, X.device
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    sign = (2.0 * y.to(dtype) - 1.0).to(device)  # (N,)
    w = torch.ones(N, dtype=dtype, device=device) if sample_weight is None else sample_weight.to(dtype).to(device)
    lam = 1.0 / (C * float(w.sum()))
    w = w / w.sum()
    inv_scale = (1.0 / scale).to(dtype) if scale is not None else torch.ones(L, d, dtype=dtype, device=device)
    XT = X.transpose(1, 2)
    p = d + int(fit_intercept)
    reg_mask = torch.ones(p, dtype=dtype, device=device)
    if fit_intercept:
        reg_mask[-1] = 0.0  # the intercept is not penalised (as in scikit-learn's lbfgs)

    def margins(theta: torch.Tensor) -> torch.Tensor:
        v = (theta[:, :d] * inv_scale).to(xdtype)
        z = torch.bmm(v[:, None, :], XT).squeeze(1).to(dtype)
        return z + theta[:, d:] if fit_intercept else z

    def loss_of(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return (w * torch.nn.functional.softplus(-sign * z)).sum(1) + 0.5 * lam * (reg_mask * theta * theta).sum(1)

    def grad_of(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        r = -(w * sign) * torch.sigmoid(-sign * z)  # d loss / d z, (L, N)
        grad = torch.empty_like(theta)
        grad[:, :d] = torch.bmm(r.to(xdtype)[:, None, :], X).squeeze(1).to(dtype) * inv_scale
        if fit_intercept:
            grad[:, d] = r.sum(1)
        return grad + lam * reg_mask * theta

    theta = torch.zeros(L, p, dtype=dtype, device=device)
    z = torch.zeros(L, N, dtype=dtype, device=device)
    f, g = loss_of(z, theta), grad_of(z, theta)
    S = torch.zeros(history, L, p, dtype=dtype, device=device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(history, L, dtype=dtype, device=device)
    n_iter = torch.zeros(L, dtype=torch.int64, device=device)
    active = g.abs().amax(1) > tol
    k = 0
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # Two-loop recursion, vectorised over layers (unused history slots have rho = 0).
        q = g.clone()
        alphas = []
        order = [(k - 1 - i) % history for i in range(min(k, history))]
        for j in order:
            a = rho[j] * (S[j] * q).sum(1)
            q -= a[:, None] * Y[j]
            alphas.append(a)
        if k > 0:
            last = (k - 1) % history
            sy, yy = (S[last] * Y[last]).sum(1), (Y[last] * Y[last]).sum(1)
            gamma = torch.where((yy > 0) & (sy > 0), sy / yy.clamp_min(torch.finfo(dtype).tiny), torch.ones_like(sy))
        else:
            gamma = 1.0 / g.abs().sum(1).clamp_min(1.0)  # a cautious first step
        r = gamma[:, None] * q
        for j, a in zip(reversed(order), reversed(alphas)):
            b = rho[j] * (Y[j] * r).sum(1)
            r += S[j] * (a - b)[:, None]
        direction = -r
        slope = (g * direction).sum(1)
        bad = slope >= 0  # not a descent direction: fall back to steepest descent
        direction[bad] = -g[bad]
        slope = torch.where(bad, -(g * g).sum(1), slope)
        direction[~active] = 0.0
        dz = margins(direction)  # margins are linear in theta: the line search is free
        # Backtracking Armijo line search, each layer with its own step.
        step = torch.ones(L, dtype=dtype, device=device)
        pending = active.clone()
        for _ls in range(50):
            trial_f = loss_of(z + step[:, None] * dz, theta + step[:, None] * direction)
            ok = pending & (trial_f <= f + 1e-4 * step * slope)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            step = torch.where(pending, step * 0.5, step)
        stalled = pending  # no acceptable step: at numerical precision, stop that layer
        step = torch.where(stalled | ~active, torch.zeros_like(step), step)
        new_theta = theta + step[:, None] * direction
        new_z = z + step[:, None] * dz
        new_f, new_g = loss_of(new_z, new_theta), grad_of(new_z, new_theta)
        s_vec, y_vec = new_theta - theta, new_g - g
        sy = (s_vec * y_vec).sum(1)
        slot = k % history
        S[slot], Y[slot] = s_vec, y_vec
        rho[slot] = torch.where(sy > 1e-10 * (y_vec * y_vec).sum(1).sqrt() * (s_vec * s_vec).sum(1).sqrt(),
                                1.0 / sy.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(sy))
        theta, z, f, g = new_theta, new_z, new_f, new_g
        n_iter += active.to(torch.int64)
        k += 1
        active = active & ~stalled & (g.abs().amax(1) > tol)
    converged = g.abs().amax(1) <= tol * 10
    coef = theta[:, :d]
    intercept = theta[:, d] if fit_intercept else torch.zeros(L, dtype=dtype, device=device)
    return coef, intercept, n_iter, converged


def _class_means(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = y.bool()
    return X[:, ~pos].mean(1), X[:, pos].mean(1)


def _midpoint_intercept(coef: torch.Tensor, mu0: torch.Tensor, mu1: torch.Tensor) -> torch.Tensor:
    return -(coef * (mu0 + mu1) / 2).sum(-1)


def ledoit_wolf_shrinkage(Xc: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf shrinkage intensity (L,) for centred data ``Xc`` (L, N, d), as in scikit-learn."""
    _, n, d = Xc.shape
    X2 = Xc * Xc
    emp = torch.bmm(Xc.transpose(1, 2), Xc) / n
    emp_trace = torch.diagonal(emp, dim1=1, dim2=2).sum(1)
    mu = emp_trace / d
    beta_ = (torch.bmm(X2.transpose(1, 2), X2)).sum((1, 2))
    delta_ = (emp * emp).sum((1, 2))
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * emp_trace + d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    return torch.where(delta > 0, beta / delta.clamp_min(torch.finfo(Xc.dtype).tiny), torch.zeros_like(delta))


def _lda(X: torch.Tensor, y: torch.Tensor, shrinkage: float | str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu0, mu1 = _class_means(X, y)
    pos = y.bool()
    n = X.shape[1]
    centred = X.clone()
    centred[:, ~pos] -= mu0[:, None]
    centred[:, pos] -= mu1[:, None]
    # Within-class covariance weighted by class priors = pooled (ML) covariance of class-centred rows.
    cov = torch.bmm(centred.transpose(1, 2), centred) / n
    d = X.shape[2]
    if shrinkage is None or shrinkage == 0:
        alpha = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    elif shrinkage == "auto":
        alpha = ledoit_wolf_shrinkage(centred)
    else:
        value = float(shrinkage)
        if not 0 <= value <= 1:
            raise GeomprobeError(f"shrinkage must be 'auto' or between 0 and 1; got {shrinkage}")
        alpha = torch.full((X.shape[0],), value, dtype=X.dtype, device=X.device)
    target = torch.diagonal(cov, dim1=1, dim2=2).sum(1) / d
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    cov = (1 - alpha)[:, None, None] * cov + (alpha * target)[:, None, None] * eye
    diff = (mu1 - mu0)[:, :, None]
    try:
        coef = torch.linalg.solve(cov, diff).squeeze(-1)
    except RuntimeError:  # singular without shrinkage
        coef = torch.bmm(torch.linalg.pinv(cov, hermitian=True), diff).squeeze(-1)
    prior = float(pos.float().mean())
    intercept = _midpoint_intercept(coef, mu0, mu1) + np.log(prior / (1 - prior))
    return coef, intercept, alpha


def _pca_diff(X: torch.Tensor, y: torch.Tensor, groups: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    if groups is None or not np.any(groups >= 0):
        raise GeomprobeError(
            "pca-diff needs paired data (pair ids); this data has none; use --method logistic, mean-diff or lda"
        )
    y_np = y.cpu().numpy()
    diffs = []
    for gid in np.unique(groups[groups >= 0]):
        rows = np.flatnonzero(groups == gid)
        pos_rows, neg_rows = rows[y_np[rows] == 1], rows[y_np[rows] == 0]
        if len(pos_rows) and len(neg_rows):
            diffs.append(X[:, pos_rows].mean(1) - X[:, neg_rows].mean(1))
    if len(diffs) < 2:
        raise GeomprobeError(
            f"pca-diff found {len(diffs)} pair(s) with both classes; it needs at least 2 (check pair ids and labels)"
        )
    D = torch.stack(diffs, dim=1)  # (L, P, d)
    # PCA with random sign flips (the RepE / LAT recipe) estimates the top eigenvector of the
    # uncentred second moment of the differences; compute that exactly instead of sampling signs.
    gram = torch.bmm(D.transpose(1, 2), D) / D.shape[1]
    _, vecs = torch.linalg.eigh(gram)
    coef = vecs[:, :, -1]
    mu0, mu1 = _class_means(X, y)
    flip = torch.sign(((mu1 - mu0) * coef).sum(-1))
    coef = coef * torch.where(flip == 0, torch.ones_like(flip), flip)[:, None]
    return coef, _midpoint_intercept(coef, mu0, mu1), len(diffs)


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
    C: float = 0.1,
    fit_intercept: bool = False,
    standardize: bool | None = None,
    shrinkage: float | str | None = "auto",
    class_weight: str | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
) -> LayerFit:
    """Fit one probe per layer on ``X`` (L, N, d) with 0/1 labels ``y`` (N,), all layers at once.

    ``standardize`` defaults to True for logistic and False for the closed-form methods
    (the reference recipes). ``pairs`` (N,) holds pair ids (-1 = unpaired), used by pca-diff.
    """
    from geomprobe.core.device import resolve_device

    method = canonical_method(method)
    X, y = check_training_data(X, y)
    groups = _pair_groups(pairs, X.shape[1])
    dev = resolve_device(device)
    tdtype = _torch_dtype(dtype, dev)
    if standardize is None:
        standardize = method == "logistic"
    yt = torch.as_tensor(y, device=dev)
    if method == "logistic":
        # Keep the cache's float dtype (float32) for the passes over X; parameters are float64.
        Xt = torch.as_tensor(X).to(device=dev)
        if not Xt.is_floating_point():
            Xt = Xt.to(tdtype)
        Xs, mean, scale = _centre_scale(Xt, bool(standardize))
    else:
        Xt = torch.as_tensor(X).to(device=dev, dtype=tdtype)
        Xs, mean, scale = _standardize(Xt, bool(standardize))
    params: dict[str, Any] = {"standardize": bool(standardize)}
    n_iter = converged = None
    if method == "logistic":
        weights = None
        if class_weight == "balanced":
            counts = np.bincount(y, minlength=2)
            weights = torch.as_tensor(len(y) / (2.0 * counts[y]), dtype=tdtype, device=dev)
        elif class_weight is not None:
            raise GeomprobeError(f"class_weight must be None or 'balanced'; got {class_weight!r}")
        coef, intercept, it, conv = batched_logistic(
            Xs, yt, C=C, fit_intercept=fit_intercept, scale=scale, sample_weight=weights, max_iter=max_iter, tol=tol
        )
        n_iter, converged = it.cpu().numpy(), conv.cpu().numpy()
        params.update(C=float(C), fit_intercept=bool(fit_intercept), class_weight=class_weight, tol=tol, max_iter=max_iter)
    elif method == "mean-diff":
        mu0, mu1 = _class_means(Xs, yt)
        coef = mu1 - mu0
        intercept = _midpoint_intercept(coef, mu0, mu1)
    elif method == "lda":
        coef, intercept, alpha = _lda(Xs, yt, shrinkage)
        params.update(shrinkage=shrinkage, shrinkage_used=[float(a) for a in alpha.cpu()])
    else:
        coef, intercept, n_pairs = _pca_diff(Xs, yt, groups)
        params.update(n_pairs=n_pairs)
    as_np = lambda t: t.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    return LayerFit(method, as_np(coef), as_np(intercept), as_np(mean), as_np(scale), params, n_iter, converged)


class ProbeSweep:
    """scikit-learn-style wrapper around :func:`fit_layers`: one probe per layer, fitted together.

    ``fit(X, y)`` with ``X`` (L, N, d); ``decision_function(X)`` and ``predict_proba`` give
    per-layer outputs (L, N); ``score(X, y)`` gives per-layer AUROC (L,).
    """

    def __init__(self, method: str = "logistic", *, C: float = 0.1, fit_intercept: bool = False,
                 standardize: bool | None = None, shrinkage: float | str | None = "auto",
                 class_weight: str | None = None, max_iter: int = 1000, tol: float = 1e-4,
                 device: str = "auto", dtype: str | None = None) -> None:
        self.method = method
        self.C = C
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.shrinkage = shrinkage
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype

    def fit(self, X, y, pairs=None) -> ProbeSweep:
        self.fit_ = fit_layers(
            X, y, self.method, pairs=pairs, C=self.C, fit_intercept=self.fit_intercept, standardize=self.standardize,
            shrinkage=self.shrinkage, class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol,
            device=self.device, dtype=self.dtype,
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
