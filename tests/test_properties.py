"""Property-based tests (hypothesis) for the metric functions: the invariances the math promises,
range checks, and no crash on any finite input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from geomprobe.activations.store import BFLOAT16_MAX, FLOAT16_MAX, from_stored, to_stored
from geomprobe.aqi import DegenerateClustersWarning, cluster_indices
from geomprobe.core.errors import GeomprobeError
from geomprobe.probes import MeanDiffProbe, accuracy, auroc, balanced_accuracy
from geomprobe.subspace import mode_subspace_overlap, principal_cosines

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz", "aqi")


# -- strategies ---------------------------------------------------------------------------------
@st.composite
def clustered(draw, max_k: int = 3, max_n: int = 7, max_d: int = 4):
    """(X, labels): 2..max_k clusters of 2..max_n points on an integer grid (exact inputs)."""
    k = draw(st.integers(2, max_k))
    d = draw(st.integers(1, max_d))
    sizes = [draw(st.integers(2, max_n)) for _ in range(k)]
    blocks = [draw(arrays(np.float64, (m, d), elements=st.integers(-20, 20).map(float))) + 15.0 * i for i, m in enumerate(sizes)]
    labels = np.repeat(np.arange(k), sizes)
    return np.concatenate(blocks), labels


def _well_posed(X: np.ndarray, labels: np.ndarray) -> bool:
    """No exact degeneracy (coinciding centroids, shared points, all-constant clusters), whose
    limit values would turn into huge finite numbers under rounding after a transformation."""
    classes = np.unique(labels)
    cents = np.array([X[labels == c].mean(0) for c in classes])
    cdist = np.sqrt(((cents[:, None] - cents[None]) ** 2).sum(-1))[~np.eye(len(classes), dtype=bool)]
    cross = min(
        np.sqrt(((X[labels == a][:, None] - X[labels == b][None]) ** 2).sum(-1)).min()
        for i, a in enumerate(classes)
        for b in classes[i + 1 :]
    )
    spread = max(np.ptp(X[labels == c], axis=0).max() for c in classes)
    return cdist.min() > 1e-3 and cross > 0 and spread > 0


def _indices(X, labels) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateClustersWarning)
        return cluster_indices(X, labels, device="cpu")


def _assert_same(a: dict[str, float], b: dict[str, float], rtol: float = 1e-7) -> None:
    for name in NAMES:
        x, y = a[name], b[name]
        if math.isinf(x) or math.isinf(y):
            assert x == y, (name, x, y)
        else:
            assert math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12), (name, x, y)


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# -- cluster indices ----------------------------------------------------------------------------------
@SETTINGS
@given(data=clustered(), seed=st.integers(0, 2**32 - 1))
def test_indices_invariant_to_row_permutation(data, seed):
    X, labels = data
    order = np.random.default_rng(seed).permutation(len(X))
    _assert_same(_indices(X, labels), _indices(X[order], labels[order]))


@SETTINGS
@given(data=clustered(), shift=arrays(np.float64, 4, elements=st.floats(-1e3, 1e3)))
def test_indices_invariant_to_translation(data, shift):
    X, labels = data
    assume(_well_posed(X, labels))
    _assert_same(_indices(X, labels), _indices(X + shift[: X.shape[1]], labels), rtol=1e-6)


@SETTINGS
@given(data=clustered(), scale=st.floats(1e-3, 1e3))
def test_indices_invariant_to_uniform_scaling(data, scale):
    # DBS, Dunn, XBI and CHI are ratios of distances (or squared distances): AQI follows.
    X, labels = data
    assume(_well_posed(X, labels))
    _assert_same(_indices(X, labels), _indices(X * scale, labels), rtol=1e-7)


@SETTINGS
@given(data=clustered(), seed=st.integers(0, 2**32 - 1))
def test_indices_invariant_to_rotation(data, seed):
    X, labels = data
    assume(_well_posed(X, labels))
    R = _orthogonal(np.random.default_rng(seed), X.shape[1])
    _assert_same(_indices(X, labels), _indices(X @ R, labels), rtol=1e-6)


@SETTINGS
@given(data=clustered(), seed=st.integers(0, 2**32 - 1))
def test_indices_invariant_to_relabelling(data, seed):
    X, labels = data
    k = labels.max() + 1
    perm = np.random.default_rng(seed).permutation(k)
    names = np.array([f"class-{p}" for p in perm])  # new names, new order, strings instead of ints
    _assert_same(_indices(X, labels), _indices(X, names[labels]))


@st.composite
def any_finite_clusters(draw):
    k = draw(st.integers(2, 3))
    d = draw(st.integers(1, 4))
    sizes = [draw(st.integers(2, 6)) for _ in range(k)]
    elements = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=True)
    X = draw(arrays(np.float64, (sum(sizes), d), elements=elements))
    labels = np.repeat(np.arange(k), sizes)
    return X, labels


@SETTINGS
@given(data=any_finite_clusters())
def test_indices_never_crash_on_finite_input(data):
    X, labels = data
    out = _indices(X, labels)
    for name in ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz"):
        value = out[name]
        assert not math.isnan(value), (name, out)
        assert value >= 0, (name, out)  # finite, or the documented +inf limit
    assert 0.0 <= out["aqi"] <= 1.0


@SETTINGS
@given(data=any_finite_clusters())
def test_indices_of_float32_input_never_crash(data):
    X, labels = data
    out = _indices(X.astype(np.float32), labels)
    assert all(not math.isnan(out[n]) for n in NAMES) and 0.0 <= out["aqi"] <= 1.0


def test_one_cluster_and_non_finite_input_are_refused():
    X = np.arange(12.0).reshape(6, 2)
    with pytest.raises(GeomprobeError, match="two or more clusters"):
        cluster_indices(X, np.zeros(6))
    X[2, 1] = np.nan
    with pytest.raises(GeomprobeError, match="NaN or inf"):
        cluster_indices(X, np.repeat([0, 1], 3))


# -- subspace overlap ----------------------------------------------------------------------------
@st.composite
def basis_pair(draw):
    d = draw(st.integers(2, 8))
    ka, kb = draw(st.integers(1, d)), draw(st.integers(1, d))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw_a = draw(arrays(np.float64, (d, ka), elements=st.floats(-10, 10))) + rng.normal(size=(d, ka))
    raw_b = draw(arrays(np.float64, (d, kb), elements=st.floats(-10, 10))) + rng.normal(size=(d, kb))
    assume(np.linalg.matrix_rank(raw_a) == ka and np.linalg.matrix_rank(raw_b) == kb)
    return np.linalg.qr(raw_a)[0], np.linalg.qr(raw_b)[0], seed


@SETTINGS
@given(pair=basis_pair())
def test_mso_symmetric_bounded_and_rotation_invariant(pair):
    A, B, seed = pair
    mso = mode_subspace_overlap(A, B)
    assert -1e-12 <= mso <= 1 + 1e-12
    assert math.isclose(mso, mode_subspace_overlap(B, A), rel_tol=1e-12, abs_tol=1e-12)
    R = _orthogonal(np.random.default_rng(seed), A.shape[0])
    assert math.isclose(mso, mode_subspace_overlap(R @ A, R @ B), rel_tol=1e-9, abs_tol=1e-12)
    # MSO is the mean squared cosine of the principal angles.
    cos = principal_cosines(A, B)
    assert math.isclose(mso, float(np.mean(cos**2)), rel_tol=1e-9, abs_tol=1e-12)
    # A subspace overlaps itself fully; a basis change inside it changes nothing.
    assert math.isclose(mode_subspace_overlap(A, A), 1.0, rel_tol=1e-12)
    Q = _orthogonal(np.random.default_rng(seed + 1), A.shape[1])
    assert math.isclose(mso, mode_subspace_overlap(A @ Q, B), rel_tol=1e-9, abs_tol=1e-12)


# -- probes -------------------------------------------------------------------------------------
@st.composite
def labelled(draw):
    n_pos, n_neg = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    d = draw(st.integers(1, 6))
    X = draw(arrays(np.float64, (n_pos + n_neg, d), elements=st.floats(-100, 100)))
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return X, y


@SETTINGS
@given(data=labelled(), scale=st.floats(1e-3, 1e3))
def test_mean_diff_auroc_invariant_to_positive_scaling(data, scale):
    X, y = data
    a = MeanDiffProbe().fit(X, y)
    b = MeanDiffProbe().fit(X * scale, y)
    sa, sb = a.decision_function(X), b.decision_function(X * scale)
    # Only (positive, negative) pairs whose scores tie up to rounding may change order.
    pos, neg = sa[y == 1], sa[y == 0]
    gap = np.abs(pos[:, None] - neg[None, :])
    fragile = int((gap <= 1e-9 * (np.abs(sa).max() + 1e-300)).sum())
    assert abs(auroc(sa, y) - auroc(sb, y)) <= fragile / gap.size + 1e-12
    assert 0.0 <= a.score(X, y) <= 1.0


@SETTINGS
@given(X=arrays(np.float64, (12, 3), elements=st.integers(-50, 50).map(float)), power=st.integers(-20, 20))
def test_mean_diff_scores_scale_exactly_by_powers_of_two(X, power):
    y = np.repeat([0, 1], 6)
    scale = 2.0**power  # exact in floating point, so ranks and AUROC must match exactly
    a, b = MeanDiffProbe().fit(X, y), MeanDiffProbe().fit(X * scale, y)
    assert auroc(a.decision_function(X), y) == auroc(b.decision_function(X * scale), y)


@SETTINGS
@given(
    scores=arrays(np.float64, st.integers(2, 40), elements=st.floats(-1e6, 1e6)),
    seed=st.integers(0, 2**32 - 1),
    threshold=st.floats(-1e6, 1e6),
)
def test_score_metrics_in_unit_interval_and_match_sklearn(scores, seed, threshold):
    from sklearn.metrics import roc_auc_score

    y = np.random.default_rng(seed).integers(0, 2, len(scores)).astype(bool)
    assume(y.any() and (~y).any())
    value = auroc(scores, y)
    assert 0.0 <= value <= 1.0
    assert math.isclose(value, roc_auc_score(y, scores), abs_tol=1e-12)
    assert math.isclose(auroc(-scores, y), 1.0 - value, abs_tol=1e-12)
    for metric in (accuracy, balanced_accuracy):
        assert 0.0 <= metric(scores, y, threshold) <= 1.0


# -- storage dtypes -------------------------------------------------------------------------------
BF16_MAX = BFLOAT16_MAX


@SETTINGS
@given(x=arrays(np.float32, st.integers(1, 64), elements=st.floats(-BF16_MAX, BF16_MAX, width=32)))
def test_bfloat16_round_trip_error_bound(x):
    back = from_stored(to_stored(x, "bfloat16", "test"), "bfloat16")
    assert back.dtype == np.float32 and np.isfinite(back).all()
    # Round to nearest with an 8-bit significand: relative error at most 2^-8 (normal numbers),
    # absolute at most half the smallest bfloat16 subnormal step below.
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= 2.0**-8 * np.abs(x.astype(np.float64)) + 2.0**-134)


@SETTINGS
@given(x=arrays(np.float32, st.integers(1, 64), elements=st.floats(-FLOAT16_MAX, FLOAT16_MAX, width=32)))
def test_float16_round_trip_within_range(x):
    back = from_stored(to_stored(x, "float16", "test"), "float16")
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= 2.0**-11 * np.abs(x.astype(np.float64)) + 2.0**-25)


@SETTINGS
@given(
    x=arrays(np.float32, st.integers(1, 32), elements=st.floats(-1e4, 1e4, width=32)),
    big=st.floats(65520.0, float(np.float32(3e38)), width=32),
    sign=st.sampled_from([-1.0, 1.0]),
    where=st.integers(0, 31),
)
def test_float16_overflow_raises(x, big, sign, where):
    x = x.copy()
    x[where % len(x)] = sign * big
    with pytest.raises(GeomprobeError, match="overflows float16"):
        to_stored(x, "float16", "blocks.0.hook_resid_post/last")


@SETTINGS
@given(
    x=arrays(np.float32, st.integers(1, 16), elements=st.floats(-1e4, 1e4, width=32)),
    big=st.floats(float(np.nextafter(np.float32(BFLOAT16_MAX), np.float32(np.inf))), float(np.finfo(np.float32).max), width=32),
    where=st.integers(0, 15),
)
def test_bfloat16_overflow_raises_or_stays_finite(x, big, where):
    # Values just above bfloat16's max may still round down to it; anything rounding to inf is refused.
    x = x.copy()
    x[where % len(x)] = big
    try:
        back = from_stored(to_stored(x, "bfloat16", "test"), "bfloat16")
    except GeomprobeError as exc:
        assert "overflows bfloat16" in str(exc)
    else:
        assert np.isfinite(back).all()


def test_bfloat16_overflow_is_refused_not_stored_as_inf():
    with pytest.raises(GeomprobeError, match="overflows bfloat16"):
        to_stored(np.array([1.0, np.finfo(np.float32).max], dtype=np.float32), "bfloat16", "blocks.0.hook_resid_post/last")
    edge = np.array([BFLOAT16_MAX, -BFLOAT16_MAX], dtype=np.float32)
    assert np.array_equal(from_stored(to_stored(edge, "bfloat16", "x"), "bfloat16"), edge)
