"""Single-layer probes in scikit-learn style; each is :func:`fit_layers` with one layer.

Every fitted probe exposes ``coef_`` (in the space it was fitted in: standardised when
``standardize=True``), ``intercept_``, the scaler statistics ``mean_`` and ``scale_``, and
``direction_``: the weight vector in RAW activation space (``x . direction_`` ranks rows like
``decision_function``), which is what the steering stage takes. ``classes_[1]`` is the positive
class; ``score`` returns AUROC (the threshold-free metric probes are judged by).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.methods import UNCENTERED
from geomprobe.probes.sweep import LayerFit, fit_layers


class _LinearProbe(ClassifierMixin, BaseEstimator):
    _method = ""

    def _fit_kwargs(self) -> dict[str, Any]:
        return {}

    def _kind(self) -> str:
        return self._method

    def fit(self, X, y, pairs=None) -> _LinearProbe:
        X = np.asarray(X)
        if X.ndim != 2:
            raise GeomprobeError(f"activations must be 2-D (samples, d_model); got shape {X.shape}")
        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) == 1:
            raise GeomprobeError(f"only one class ({classes[0]!r}) in the training labels; a probe needs both classes")
        if len(classes) != 2:
            raise GeomprobeError(f"probes are binary; got {len(classes)} classes ({', '.join(map(str, classes[:5]))})")
        self.classes_ = classes
        y01 = (y == classes[1]).astype(np.int64)
        fit = fit_layers(X[None], y01, self._kind(), pairs=pairs, device=getattr(self, "device", "cpu"), **self._fit_kwargs())
        self._set_fit(fit)
        return self

    def _set_fit(self, fit: LayerFit) -> None:
        self.fit_ = fit
        self.coef_ = fit.coef[0]
        self.intercept_ = float(fit.intercept[0])
        self.mean_ = fit.mean[0]
        self.scale_ = fit.scale[0]
        self.direction_ = fit.direction[0]
        self.n_features_in_ = self.coef_.shape[0]
        if fit.n_iter is not None:
            self.n_iter_ = int(fit.n_iter[0])

    def _check_X(self, X) -> np.ndarray:
        if not hasattr(self, "fit_"):
            raise GeomprobeError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise GeomprobeError(f"expected activations of shape (N, {self.n_features_in_}); got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise GeomprobeError("activations contain NaN or inf; drop or recompute those rows")
        return X

    def decision_function(self, X) -> np.ndarray:
        X = self._check_X(X)
        return X.astype(np.float64, copy=False) @ self.direction_ + float(self.fit_.raw_intercept[0])

    def predict_proba(self, X) -> np.ndarray:
        p = expit(self.decision_function(X))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def score(self, X, y, sample_weight=None) -> float:
        """AUROC of ``decision_function`` with ``classes_[1]`` as the positive class."""
        from geomprobe.probes.metrics import auroc

        return float(auroc(self.decision_function(X), np.asarray(y) == self.classes_[1]))


class ProbeEstimator(_LinearProbe):
    """Any registered probe kind on one layer: ``params`` is its params dataclass or a dict of its fields."""

    def __init__(
        self, method: str = "logistic", params: Any = None, standardize: bool | None = None, device: str = "cpu"
    ) -> None:
        self.method = method
        self.params = params
        self.standardize = standardize
        self.device = device

    def _kind(self) -> str:
        return self.method

    def _fit_kwargs(self) -> dict[str, Any]:
        return dict(params=self.params, standardize=self.standardize)


class LogisticProbe(_LinearProbe):
    """Standardised L2 logistic regression (the deception-probe reference: C=0.1, no intercept)."""

    _method = "logistic"

    def __init__(
        self,
        C: float = 0.1,
        fit_intercept: bool = False,
        standardize: bool = True,
        class_weight: str | None = None,
        max_iter: int = 1000,
        tol: float = 1e-4,
        device: str = "cpu",
    ) -> None:
        self.C = C
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.device = device

    def _fit_kwargs(self) -> dict[str, Any]:
        return dict(
            C=self.C,
            fit_intercept=self.fit_intercept,
            standardize=self.standardize,
            class_weight=self.class_weight,
            max_iter=self.max_iter,
            tol=self.tol,
        )


class MeanDiffProbe(_LinearProbe):
    """Difference of class means; the intercept puts 0 halfway between the means."""

    _method = "mean-diff"

    def __init__(self, standardize: bool = False, device: str = "cpu") -> None:
        self.standardize = standardize
        self.device = device

    def _fit_kwargs(self) -> dict[str, Any]:
        return dict(standardize=self.standardize)


class LDAProbe(_LinearProbe):
    """Covariance-adjusted mean difference ``Sigma^-1 (mu1 - mu0)`` with shrinkage.

    ``Sigma`` is the prior-weighted within-class covariance shrunk towards ``trace/d * I``
    (``shrinkage`` in [0, 1], or ``"auto"`` for Ledoit-Wolf); equals scikit-learn's
    ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=...)`` for a fixed shrinkage.
    """

    _method = "lda"

    def __init__(self, shrinkage: float | str | None = "auto", standardize: bool = False, device: str = "cpu") -> None:
        self.shrinkage = shrinkage
        self.standardize = standardize
        self.device = device

    def _fit_kwargs(self) -> dict[str, Any]:
        return dict(shrinkage=self.shrinkage, standardize=self.standardize)


class PCADiffProbe(_LinearProbe):
    """Top principal direction of paired differences (LAT / RepE), signed so positives score higher.

    ``fit(X, y, pairs=pair_ids)``: within each pair the positive minus the negative row;
    the direction is the top eigenvector of the differences' (uncentred) second moment,
    which is what PCA after random sign flips estimates. The result is a unit vector.
    """

    _method = UNCENTERED

    def __init__(self, standardize: bool = False, device: str = "cpu") -> None:
        self.standardize = standardize
        self.device = device

    def _fit_kwargs(self) -> dict[str, Any]:
        return dict(standardize=self.standardize)


ESTIMATORS = {"logistic": LogisticProbe, "mean-diff": MeanDiffProbe, "lda": LDAProbe, UNCENTERED: PCADiffProbe}


def make_estimator(method: str, **params: Any) -> _LinearProbe:
    """A single-layer estimator of any registered kind: the named class for a built-in kind, else
    :class:`ProbeEstimator` (``params`` are the kind's fields, checked when fitting)."""
    from geomprobe.probes.kinds import canonical_method

    name = canonical_method(method)
    if name in ESTIMATORS:
        return ESTIMATORS[name](**params)
    return ProbeEstimator(name, params=params or None)
