"""The built-in probe kinds, registered exactly as a new kind would be (see docs/architecture.md).

Each is a params dataclass (validated in ``__post_init__``) and a fit function over all layers at
once that calls its solver in :mod:`geomprobe.probes.solvers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.methods import UNCENTERED
from geomprobe.probes.kinds import KindFit, ProbeData, register_probe_kind
from geomprobe.probes.solvers import batched_logistic, class_means, lda_direction, midpoint_intercept, pca_diff_direction


@dataclass(frozen=True)
class LogisticParams:
    """L2 logistic regression: ``C`` inverse regularisation strength (scikit-learn's), no intercept by default."""

    C: float = 0.1
    fit_intercept: bool = False
    class_weight: str | None = None  # None or "balanced"
    max_iter: int = 1000
    tol: float = 1e-4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.C) and self.C > 0):
            raise GeomprobeError(f"logistic C must be a positive finite number; got {self.C}")
        if self.class_weight not in (None, "balanced"):
            raise GeomprobeError(f"class_weight must be None or 'balanced'; got {self.class_weight!r}")
        if self.max_iter < 1 or not (math.isfinite(self.tol) and self.tol > 0):
            raise GeomprobeError(f"logistic needs max_iter >= 1 and tol > 0; got {self.max_iter} and {self.tol}")


def fit_logistic(data: ProbeData, params: LogisticParams) -> KindFit:
    weights = None
    if params.class_weight == "balanced":
        y = data.labels
        counts = np.bincount(y, minlength=2)
        weights = torch.as_tensor(len(y) / (2.0 * counts[y]), dtype=data.dtype, device=data.X.device)
    coef, intercept, n_iter, converged = batched_logistic(
        data.X,
        data.y,
        C=params.C,
        fit_intercept=params.fit_intercept,
        scale=data.scale,
        sample_weight=weights,
        max_iter=params.max_iter,
        tol=params.tol,
    )
    return KindFit(coef, intercept, n_iter=n_iter.cpu().numpy(), converged=converged.cpu().numpy())


@dataclass(frozen=True)
class NoParams:
    """A kind with nothing to set."""


def fit_mean_diff(data: ProbeData, params: NoParams) -> KindFit:
    mu0, mu1 = class_means(data.X, data.y)
    coef = mu1 - mu0
    return KindFit(coef, midpoint_intercept(coef, mu0, mu1))


@dataclass(frozen=True)
class LDAParams:
    """``shrinkage`` of the within-class covariance towards ``trace/d * I``: in [0, 1], or "auto" (Ledoit-Wolf)."""

    shrinkage: float | str | None = "auto"

    def __post_init__(self) -> None:
        ok = (
            self.shrinkage is None
            or self.shrinkage == "auto"
            or (isinstance(self.shrinkage, (int, float)) and 0 <= float(self.shrinkage) <= 1)
        )
        if not ok:
            raise GeomprobeError(f"shrinkage must be 'auto' or between 0 and 1; got {self.shrinkage}")


def fit_lda(data: ProbeData, params: LDAParams) -> KindFit:
    coef, intercept, alpha = lda_direction(data.X, data.y, params.shrinkage)
    return KindFit(coef, intercept, {"shrinkage_used": [float(a) for a in alpha.cpu()]})


def fit_pca_diff(data: ProbeData, params: NoParams) -> KindFit:
    coef, intercept, n_pairs = pca_diff_direction(data.X, data.y, data.pairs)
    return KindFit(coef, intercept, {"n_pairs": n_pairs})


register_probe_kind(
    "logistic",
    LogisticParams,
    fit_logistic,
    aliases=("logreg", "lr"),
    standardize=True,
    scales_itself=True,
    description="standardised L2 logistic regression (batched L-BFGS)",
)
register_probe_kind(
    "mean-diff",
    NoParams,
    fit_mean_diff,
    aliases=("mean_diff", "meandiff", "diff-of-means", "dim"),
    description="difference of class means, intercept halfway between them",
)
register_probe_kind(
    "lda", LDAParams, fit_lda, aliases=("covariance-adjusted",), description="covariance-adjusted mean difference with shrinkage"
)
register_probe_kind(
    UNCENTERED,
    NoParams,
    fit_pca_diff,
    aliases=("pca", "lat", "repe"),
    description="top principal direction of the uncentred paired differences (RepE / LAT)",
)
