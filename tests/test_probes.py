"""Probe estimators and the all-layer sweep against scikit-learn and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage as sk_lw
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from geomprobe.core.errors import GeomprobeError
from geomprobe.probes import (
    LDAProbe,
    LogisticProbe,
    MeanDiffProbe,
    PCADiffProbe,
    ProbeSweep,
    fit_layers,
    pair_groups,
    pair_kfold,
    pair_train_test_split,
)
from geomprobe.probes.solvers import ledoit_wolf_shrinkage


def make_layers(L=4, N=240, d=24, seed=0, paired=True):
    """Paired data: each pair shares a 'fact' vector; the positive member adds a layer-dependent shift."""
    rng = np.random.default_rng(seed)
    n_pairs = N // 2
    y = np.tile([0, 1], n_pairs)
    pairs = np.repeat(np.arange(n_pairs), 2) if paired else np.full(N, -1)
    X = np.empty((L, N, d), np.float32)
    for l in range(L):
        u = rng.normal(size=d)
        u /= np.linalg.norm(u)
        fact = rng.normal(size=(n_pairs, d)) * rng.uniform(0.5, 2.0, d)
        noise = rng.normal(scale=0.7, size=(N, d))
        X[l] = np.repeat(fact, 2, axis=0) + noise + (1.5 + 0.5 * l) * np.outer(y, u) + rng.normal(0, 3, d)
    return X, y, pairs


def sk_logistic(X, y, C=0.1, fit_intercept=False, class_weight=None):
    Xs = StandardScaler().fit_transform(X.astype(np.float64))
    return LogisticRegression(C=C, fit_intercept=fit_intercept, class_weight=class_weight, tol=1e-10, max_iter=10000).fit(Xs, y)


def test_sweep_matches_sklearn_per_layer():
    X, y, _ = make_layers()
    fit = fit_layers(X, y, "logistic", device="cpu", tol=1e-8)
    assert fit.converged.all()
    for l in range(X.shape[0]):
        ref = sk_logistic(X[l], y)
        corr = np.corrcoef(ref.coef_[0], fit.coef[l])[0, 1]
        assert corr > 0.9999
        np.testing.assert_allclose(fit.coef[l], ref.coef_[0], atol=1e-4)
        ours = fit.decision_function(X)[l]
        theirs = ref.decision_function(StandardScaler().fit_transform(X[l].astype(np.float64)))
        assert abs(roc_auc_score(y, ours) - roc_auc_score(y, theirs)) < 1e-6
        np.testing.assert_allclose(ours, theirs, atol=1e-3)
    # at scikit-learn's own default tolerance the AUROC still agrees within 0.01
    loose = fit_layers(X, y, "logistic", device="cpu")
    for l in range(X.shape[0]):
        ref = LogisticRegression(C=0.1, fit_intercept=False).fit(StandardScaler().fit_transform(X[l]), y)
        assert np.corrcoef(ref.coef_[0], loose.coef[l])[0, 1] > 0.99
        assert (
            abs(
                roc_auc_score(y, loose.decision_function(X)[l])
                - roc_auc_score(y, ref.decision_function(StandardScaler().fit_transform(X[l])))
            )
            < 0.01
        )


@pytest.mark.parametrize("fit_intercept,class_weight", [(True, None), (False, "balanced")])
def test_logistic_options_match_sklearn(fit_intercept, class_weight):
    X, y, _ = make_layers(L=1, N=150)
    keep = np.r_[np.arange(150)[y == 0], np.arange(150)[y == 1][:40]]  # unbalanced
    Xk, yk = X[0][keep], y[keep]
    probe = LogisticProbe(C=0.5, fit_intercept=fit_intercept, class_weight=class_weight, tol=1e-8).fit(Xk, yk)
    ref = sk_logistic(Xk, yk, C=0.5, fit_intercept=fit_intercept, class_weight=class_weight)
    np.testing.assert_allclose(probe.coef_, ref.coef_[0], atol=1e-4)
    np.testing.assert_allclose(probe.intercept_, ref.intercept_[0] if fit_intercept else 0.0, atol=1e-4)


def test_direction_is_raw_space():
    X, y, _ = make_layers(L=1)
    probe = LogisticProbe().fit(X[0], y)
    raw = X[0].astype(np.float64) @ probe.direction_ + float(probe.fit_.raw_intercept[0])
    std = ((X[0] - probe.mean_) / probe.scale_) @ probe.coef_ + probe.intercept_
    np.testing.assert_allclose(probe.decision_function(X[0]), raw)
    np.testing.assert_allclose(raw, std, atol=1e-6)
    np.testing.assert_allclose(probe.mean_, X[0].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probe.scale_, X[0].std(0), rtol=1e-5)
    proba = probe.predict_proba(X[0])
    assert proba.shape == (len(y), 2) and np.allclose(proba.sum(1), 1)


def test_mean_diff_brute_force():
    X, y, _ = make_layers(L=1)
    probe = MeanDiffProbe().fit(X[0], y)
    mu0, mu1 = X[0][y == 0].astype(np.float64).mean(0), X[0][y == 1].astype(np.float64).mean(0)
    np.testing.assert_allclose(probe.direction_, mu1 - mu0, rtol=1e-9, atol=1e-9)
    # zero halfway between the class means
    assert abs(probe.decision_function(((mu0 + mu1) / 2)[None])[0]) < 1e-8
    assert probe.score(X[0], y) > 0.55  # weak here: the pair 'facts' dominate the variance


@pytest.mark.parametrize("shrinkage", [0.0, 0.3])
def test_lda_matches_sklearn(shrinkage):
    X, y, _ = make_layers(L=1, N=300, d=12)
    probe = LDAProbe(shrinkage=shrinkage).fit(X[0], y)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(X[0].astype(np.float64), y)
    np.testing.assert_allclose(probe.direction_, ref.coef_[0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(probe.decision_function(X[0]), ref.decision_function(X[0].astype(np.float64)), atol=1e-6)


def test_ledoit_wolf_matches_sklearn():
    import torch

    rng = np.random.default_rng(3)
    Xc = rng.normal(size=(2, 80, 10)) * rng.uniform(0.5, 3, 10)
    Xc -= Xc.mean(1, keepdims=True)
    ours = ledoit_wolf_shrinkage(torch.as_tensor(Xc)).numpy()
    for l in range(2):
        assert ours[l] == pytest.approx(sk_lw(Xc[l], assume_centered=True), rel=1e-9)


def test_pca_diff_matches_svd_and_sign():
    X, y, pairs = make_layers(L=1)
    probe = PCADiffProbe().fit(X[0], y, pairs=pairs)
    D = X[0][y == 1].astype(np.float64) - X[0][y == 0].astype(np.float64)  # rows are ordered pair by pair
    _, _, vt = np.linalg.svd(D, full_matrices=False)
    assert abs(abs(vt[0] @ probe.direction_) - 1) < 1e-8
    assert np.linalg.norm(probe.direction_) == pytest.approx(1.0)
    s = probe.decision_function(X[0])
    assert s[y == 1].mean() > s[y == 0].mean()
    # label order flipped (positive is now class 1 = the old negatives): sign follows
    flipped = PCADiffProbe().fit(X[0], 1 - y, pairs=pairs)
    np.testing.assert_allclose(flipped.direction_, -probe.direction_, atol=1e-10)


def test_pca_diff_needs_pairs():
    X, y, _ = make_layers(L=1, paired=False)
    with pytest.raises(GeomprobeError, match="paired"):
        PCADiffProbe().fit(X[0], y)


@pytest.mark.parametrize("method", ["mean-diff", "lda", "pca-diff-uncentered"])
def test_closed_form_sweep_equals_single_layer(method):
    X, y, pairs = make_layers(L=3)
    sweep = ProbeSweep(method, device="cpu").fit(X, y, pairs=pairs)
    cls = {"mean-diff": MeanDiffProbe, "lda": LDAProbe, "pca-diff-uncentered": PCADiffProbe}[method]
    for l in range(3):
        single = cls().fit(X[l], y, pairs=pairs)
        np.testing.assert_allclose(sweep.direction_[l], single.direction_, rtol=1e-6, atol=1e-9)
    aucs = sweep.score(X, y)
    assert aucs.shape == (3,) and np.all(aucs > 0.55)


def test_string_labels_and_classes():
    X, y, _ = make_layers(L=1)
    names = np.array(["honest", "dishonest"])[y]
    probe = LogisticProbe().fit(X[0], names)
    assert list(probe.classes_) == ["dishonest", "honest"]  # sorted: 'honest' is classes_[1]
    assert probe.score(X[0], names) == pytest.approx(LogisticProbe().fit(X[0], y).score(X[0], y))
    assert set(probe.predict(X[0])) <= {"honest", "dishonest"}


def test_bad_input():
    X, y, _ = make_layers(L=1, N=40)
    with pytest.raises(GeomprobeError, match="one class"):
        LogisticProbe().fit(X[0], np.zeros(40))
    with pytest.raises(GeomprobeError, match="one class"):
        fit_layers(X, np.ones(40, dtype=int))
    bad = X.copy()
    bad[0, 3, 2] = np.nan
    with pytest.raises(GeomprobeError, match="NaN"):
        fit_layers(bad, y)
    probe = LogisticProbe().fit(X[0], y)
    with pytest.raises(GeomprobeError, match="shape"):
        probe.decision_function(X[0][:, :5])
    with pytest.raises(GeomprobeError, match="unknown probe method"):
        fit_layers(X, y, "svm")
    with pytest.raises(GeomprobeError, match="labels"):
        fit_layers(X, y[:10])


def test_pair_split_respects_pairs_and_stratifies():
    _, y, pairs = make_layers(L=1, N=200)
    pairs = pairs.copy()
    pairs[:20] = -1  # ten unpaired rows each become their own group
    train, test = pair_train_test_split(y, pairs, test_size=0.2, seed=1)
    assert not set(train) & set(test) and len(train) + len(test) == 200
    groups = pair_groups(pairs)
    assert not set(groups[train]) & set(groups[test])
    assert 0.1 < len(test) / 200 < 0.3
    assert abs(y[test].mean() - 0.5) < 0.1
    again = pair_train_test_split(y, pairs, test_size=0.2, seed=1)
    assert np.array_equal(again[1], test)
    folds = list(pair_kfold(y, pairs, n_splits=4, seed=0))
    assert len(folds) == 4
    seen = np.concatenate([t for _, t in folds])
    assert np.array_equal(np.sort(seen), np.arange(200))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
    with pytest.raises(GeomprobeError):
        pair_train_test_split(y, pairs, test_size=1.5)
