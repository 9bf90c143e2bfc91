"""The batched solvers behind the built-in probe kinds: every layer solved together.

``X`` is ``(L, N, d)`` and every solver returns ``(L, d)`` coefficients. Logistic regression uses a
batched L-BFGS in which each layer keeps its own curvature history, step length and stopping test
(the problems are independent, so sharing one optimiser state across layers would only slow
convergence). Mean difference, covariance-adjusted mean difference (LDA) and PCA of paired
differences are closed form.

The logistic objective is scikit-learn's, divided by ``C * sum(w)`` (same optimum)::

    mean_i w_i log(1 + exp(-s_i x_i . b)) + ||b||^2 / (2 C sum(w))      s_i = +1 / -1

so with ``standardize=True`` and ``fit_intercept=False`` the result equals
``StandardScaler`` followed by ``LogisticRegression(C=C, fit_intercept=False)``.
"""

from __future__ import annotations

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError


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
        rho[slot] = torch.where(
            sy > 1e-10 * (y_vec * y_vec).sum(1).sqrt() * (s_vec * s_vec).sum(1).sqrt(),
            1.0 / sy.clamp_min(torch.finfo(dtype).tiny),
            torch.zeros_like(sy),
        )
        theta, z, f, g = new_theta, new_z, new_f, new_g
        n_iter += active.to(torch.int64)
        k += 1
        active = active & ~stalled & (g.abs().amax(1) > tol)
    converged = g.abs().amax(1) <= tol * 10
    coef = theta[:, :d]
    intercept = theta[:, d] if fit_intercept else torch.zeros(L, dtype=dtype, device=device)
    return coef, intercept, n_iter, converged


def class_means(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = y.bool()
    return X[:, ~pos].mean(1), X[:, pos].mean(1)


def midpoint_intercept(coef: torch.Tensor, mu0: torch.Tensor, mu1: torch.Tensor) -> torch.Tensor:
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


def lda_direction(
    X: torch.Tensor, y: torch.Tensor, shrinkage: float | str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu0, mu1 = class_means(X, y)
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
    intercept = midpoint_intercept(coef, mu0, mu1) + np.log(prior / (1 - prior))
    return coef, intercept, alpha


def pca_diff_direction(X: torch.Tensor, y: torch.Tensor, groups: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    if groups is None or not np.any(groups >= 0):
        raise GeomprobeError(
            "pca-diff-uncentered needs paired data (pair ids); this data has none; use --method logistic, mean-diff or lda"
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
            f"pca-diff-uncentered found {len(diffs)} pair(s) with both classes; it needs at least 2 (check pair ids and labels)"
        )
    D = torch.stack(diffs, dim=1)  # (L, P, d)
    # PCA with random sign flips (the RepE / LAT recipe) estimates the top eigenvector of the
    # uncentred second moment of the differences; compute that exactly instead of sampling signs.
    gram = torch.bmm(D.transpose(1, 2), D) / D.shape[1]
    _, vecs = torch.linalg.eigh(gram)
    coef = vecs[:, :, -1]
    mu0, mu1 = class_means(X, y)
    flip = torch.sign(((mu1 - mu0) * coef).sum(-1))
    coef = coef * torch.where(flip == 0, torch.ones_like(flip), flip)[:, None]
    return coef, midpoint_intercept(coef, mu0, mu1), len(diffs)
