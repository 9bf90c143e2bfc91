"""geomprobe.core.stats: the one bootstrap.

Three kinds of check: (1) the index draws and quantiles against numpy written out by hand;
(2) intervals against scipy.stats.bootstrap (independent resampling, so within Monte Carlo error):
a mean, a class-stratified AUROC from scikit-learn, a difference of paired means; (3) a regression
check that the four bootstraps now routed through core.stats give the numbers the hand-written
copies gave before (values computed with the old code on these inputs and inlined, draw for draw).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import bootstrap as scipy_bootstrap
from sklearn.metrics import roc_auc_score

from geomprobe.core import stats
from geomprobe.core.errors import GeomprobeError

# --- (1) the draws and the quantile rule, written out -------------------------------------------------


def test_index_draws_match_numpy_written_out():
    strata = [np.array([3, 5, 8, 9]), np.array([0, 1, 2]), np.array([4, 6, 7, 10, 11])]
    got = list(stats.stratified_resamples(strata, 30, seed=12))
    gen = np.random.default_rng(12)
    for parts in got:
        # the rule the old copies used: rng.choice per stratum in turn
        for part, g in zip(parts, strata):
            assert np.array_equal(part, gen.choice(g, size=len(g), replace=True))
    flat = list(stats.bootstrap_indices(strata, 30, seed=12))
    assert all(np.array_equal(f, np.concatenate(p)) for f, p in zip(flat, got))
    # one stratum of n rows: rng.integers(0, n, n) per replicate, and the matrix form makes the same draws
    gen = np.random.default_rng(4)
    loop = np.stack([gen.integers(0, 17, 17) for _ in range(50)])
    assert np.array_equal(np.stack(list(stats.bootstrap_indices(17, 50, seed=4))), loop)
    assert np.array_equal(stats.index_matrix(17, 50, seed=4), loop)


def test_a_passed_generator_is_continued_not_reseeded():
    gen = np.random.default_rng(9)
    first = list(stats.bootstrap_indices(6, 3, gen))
    second = list(stats.bootstrap_indices(6, 3, gen))
    ref = np.random.default_rng(9).integers(0, 6, size=(6, 6))
    assert np.array_equal(np.stack(first + second), ref)
    assert not np.array_equal(np.stack(first), np.stack(second))


def test_strata_from_labels_and_empty_stratum():
    assert [s.tolist() for s in stats.strata_from_labels(["b", "a", "b", "c", "a"])] == [[1, 4], [0, 2], [3]]
    draws = list(stats.stratified_resamples([np.array([], dtype=int), np.array([2, 3])], 4, seed=0))
    assert all(len(p[0]) == 0 and set(p[1]) <= {2, 3} for p in draws)


def test_percentile_interval_rules():
    rng = np.random.default_rng(0)
    v = rng.normal(size=501)
    low, high = stats.percentile_interval(v, 0.9)
    # the probabilities are computed as (1 -+ level) / 2 ((1 - 0.8) / 2 is not the double 0.1)
    assert (low, high) == tuple(np.quantile(v, [(1 - 0.9) / 2, (1 + 0.9) / 2]))
    est = 0.3
    assert stats.percentile_interval(v, 0.9, method="basic", estimate=est) == (2 * est - high, 2 * est - low)
    # a vector statistic: one interval per column, replicates along axis 0
    m = rng.normal(size=(200, 3))
    q10, q90 = (1 - 0.8) / 2, (1 + 0.8) / 2
    lo, hi = stats.percentile_interval(m, 0.8)
    assert np.array_equal(lo, np.quantile(m, q10, axis=0)) and np.array_equal(hi, np.quantile(m, q90, axis=0))
    # non-finite replicates: that column switches to inverted_cdf (replicate values, no inf - inf), others stay linear
    m[5, 1] = np.inf
    lo, hi = stats.percentile_interval(m, 0.8)
    assert lo[1] == np.quantile(m[:, 1], q10, method="inverted_cdf") and math.isfinite(lo[1])
    assert lo[0] == np.quantile(m[:, 0], q10) and hi[2] == np.quantile(m[:, 2], q90)
    lo, hi = stats.percentile_interval(m, 0.8, method="basic", estimate=np.zeros(3))
    assert math.isnan(lo[1]) and math.isnan(hi[1]) and hi[0] == -np.quantile(m[:, 0], q10)
    # drop: the finite replicates only
    w = np.r_[v, np.nan, np.inf]
    assert stats.percentile_interval(w, 0.9, nonfinite="drop") == (low, high)
    assert all(math.isnan(x) for x in stats.percentile_interval([np.nan, np.inf], nonfinite="drop"))


def test_p_value_against_a_counting_loop():
    rng = np.random.default_rng(3)
    for shift in (-1.0, -0.2, 0.0, 0.4, 2.5):
        d = np.round(rng.normal(shift, 1, size=80), 1)
        d[:3] = [np.nan, np.inf, -np.inf]
        kept = [x for x in d if math.isfinite(x)]
        below = sum(1 for x in kept if x <= 0)
        above = sum(1 for x in kept if x >= 0)
        assert stats.bootstrap_p_value(d) == min(1.0, 2 * (1 + min(below, above)) / (1 + len(kept)))
    assert stats.bootstrap_p_value(np.full(9, 0.5), null=0.5) == 1.0
    assert stats.bootstrap_p_value(np.arange(1.0, 40.0)) == pytest.approx(2 / 40)


# --- (2) against scipy.stats.bootstrap (independent draws: Monte Carlo tolerance) ------------------------

B = 3000


def _close(ours: tuple[float, float], ref, standard_error: float) -> None:
    # each endpoint's Monte Carlo sd is ~0.045 standard errors at B = 3000 and 95%; allow about 4 sd of the difference
    assert ours[0] == pytest.approx(float(ref.low), abs=0.25 * standard_error)
    assert ours[1] == pytest.approx(float(ref.high), abs=0.25 * standard_error)


def test_mean_interval_agrees_with_scipy():
    x = np.random.default_rng(0).exponential(size=60)
    ours = stats.bootstrap(lambda rows: x[rows].mean(), 60, n_bootstrap=B, seed=1)
    ref = scipy_bootstrap((x,), np.mean, n_resamples=B, method="percentile", rng=np.random.default_rng(2))
    assert ours.estimate == pytest.approx(x.mean()) and ours.replicates.shape == (B,)
    _close(ours.interval, ref.confidence_interval, ref.standard_error)


def test_stratified_auroc_interval_agrees_with_scipy_two_sample():
    # scipy resamples each sample of an unpaired multi-sample statistic independently: a class-stratified bootstrap
    rng = np.random.default_rng(1)
    y = rng.random(70) < 0.4
    s = rng.normal(size=70) + 0.8 * y
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    ours = stats.bootstrap(lambda rows: roc_auc_score(y[rows], s[rows]), [pos, neg], n_bootstrap=B, seed=1)

    def auroc(p: np.ndarray, n: np.ndarray) -> float:
        return roc_auc_score(np.r_[np.ones(len(p)), np.zeros(len(n))], np.r_[p, n])

    ref = scipy_bootstrap(
        (s[pos], s[neg]), auroc, n_resamples=B, method="percentile", vectorized=False, rng=np.random.default_rng(2)
    )
    assert ours.estimate == pytest.approx(roc_auc_score(y, s))
    _close(ours.interval, ref.confidence_interval, ref.standard_error)


def test_paired_difference_agrees_with_scipy_paired():
    rng = np.random.default_rng(2)
    a = rng.normal(size=50)
    b = a + 0.3 + 0.5 * rng.normal(size=50)
    ours = stats.paired_bootstrap(lambda rows: (a[rows].mean(), b[rows].mean()), 50, n_bootstrap=B, seed=1)
    ref = scipy_bootstrap(
        (a, b),
        lambda u, v: np.mean(v) - np.mean(u),
        paired=True,
        vectorized=False,
        n_resamples=B,
        method="percentile",
        rng=np.random.default_rng(2),
    )
    assert ours.delta == pytest.approx(b.mean() - a.mean()) and ours.n == 50 and len(ours.replicates) == B
    _close((ours.low, ours.high), ref.confidence_interval, ref.standard_error)
    # pairing matters: the unpaired interval of the same difference is much wider
    unpaired = scipy_bootstrap(
        (a, b),
        lambda u, v: np.mean(v) - np.mean(u),
        n_resamples=B,
        method="percentile",
        vectorized=False,
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert ours.high - ours.low < 0.6 * (unpaired.high - unpaired.low)
    assert ours.low > 0 and ours.p_value < 0.01


def test_bca_is_scipys():
    x = np.random.default_rng(5).exponential(size=40)
    ours = stats.bootstrap(lambda rows: x[rows].mean(), 40, n_bootstrap=1000, method="BCa", seed=3)
    ref = scipy_bootstrap((x,), np.mean, n_resamples=1000, method="BCa", rng=np.random.default_rng(3))
    assert ours.interval == (ref.confidence_interval.low, ref.confidence_interval.high) and ours.method == "BCa"
    # skewed data: BCa moves the interval right of the percentile one
    pct = stats.bootstrap(lambda rows: x[rows].mean(), 40, n_bootstrap=1000, seed=3)
    assert ours.high > pct.high


def test_bad_settings_are_one_line_errors():
    with pytest.raises(GeomprobeError, match="n_bootstrap"):
        stats.bootstrap(np.mean, 5, n_bootstrap=0)
    with pytest.raises(GeomprobeError, match="level"):
        stats.paired_bootstrap(lambda r: (0.0, 1.0), 5, n_bootstrap=10, level=1.5)
    with pytest.raises(GeomprobeError, match="method"):
        stats.percentile_interval([1.0, 2.0], method="studentized")
    with pytest.raises(GeomprobeError, match="at least one row"):
        list(stats.bootstrap_indices([np.array([], dtype=int)], 2))
    with pytest.raises(GeomprobeError, match="BCa"):
        stats.bootstrap(lambda r: float(r.mean()), [np.array([0]), np.array([1, 2])], method="BCa")


def test_paired_bootstrap_without_finite_changes_gives_nan():
    res = stats.paired_bootstrap(lambda rows: (0.0, math.inf), 4, n_bootstrap=20)
    assert math.isnan(res.low) and math.isnan(res.p_value) and len(res.replicates) == 0
    res = stats.paired_bootstrap(lambda rows: (1.0, float(rows.sum())), [np.array([2, 0]), np.array([1])], n_bootstrap=0)
    assert (res.a, res.b, res.delta, res.n) == (1.0, 3.0, 2.0, 3) and math.isnan(res.high)


# --- (3) regression: the numbers the hand-written copies gave before core.stats -------------------------
# Inputs are drawn from one seeded Generator in this order; expected values were computed with the old
# code (commit 96729fc) on exactly these inputs.


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261206)
    out: dict[str, np.ndarray] = {"flags": rng.random(37) < 0.35}
    y = rng.random(50) < 0.4
    out["y"] = y
    out["s"] = np.round(rng.normal(size=(3, 50)) + np.array([[0.5], [1.0], [0.0]]) * y, 2)  # rounded: ties
    out["fa"] = (rng.random(23) < 0.6).astype(int)
    out["fb"] = (rng.random(23) < 0.3).astype(int)
    lab = np.repeat([0, 1], [13, 9])
    out["lab"] = lab
    out["Xa"] = np.round(rng.normal(size=(22, 4)) + 1.5 * lab[:, None], 3)
    out["Xb"] = np.round(out["Xa"] + rng.normal(scale=0.4, size=(22, 4)) - 0.6 * lab[:, None], 3)
    rng.normal(size=60)  # (a p-value input the old capture drew here)
    out["Xq"] = np.round(rng.normal(size=(30, 5)) + np.repeat([0, 1, 2], 10)[:, None], 3)
    return out


def test_judge_and_auroc_intervals_unchanged():
    from geomprobe.probes.conditions import bootstrap_auroc
    from geomprobe.steering.judge import bootstrap_rate_interval

    d = _inputs()
    assert d["flags"].sum() == 13  # the inputs themselves are the ones the old values came from
    assert bootstrap_rate_interval(d["flags"], n_bootstrap=700, level=0.9, seed=11) == (0.21621621621621623, 0.4864864864864865)
    low, high = bootstrap_auroc(d["s"], d["y"], n_bootstrap=250, ci=0.9, seed=4)
    assert low.tolist() == [0.42280844155844155, 0.6637987012987013, 0.473538961038961]
    assert high.tolist() == [0.6844967532467532, 0.8937499999999999, 0.7510551948051948]


def test_audit_paired_changes_unchanged():
    from geomprobe.audit.sections.delta import aqi_statistic, bootstrap_p_value, paired_bootstrap, rate_statistic

    d = _inputs()
    ch = paired_bootstrap(rate_statistic(d["fa"].tolist(), d["fb"].tolist()), np.zeros(23), n_bootstrap=300, seed=2)
    assert (ch.a, ch.b, ch.delta, ch.ci_low, ch.ci_high, ch.p_value, ch.n) == (
        0.5652173913043478,
        0.2608695652173913,
        -0.3043478260869565,
        -0.6086956521739131,
        -0.043478260869565216,
        0.03986710963455149,
        23,
    )
    ch = paired_bootstrap(aqi_statistic(d["Xa"], d["Xb"], d["lab"]), d["lab"], n_bootstrap=40, seed=9)
    assert (ch.a, ch.b, ch.delta, ch.ci_low, ch.ci_high) == pytest.approx(
        (0.25756019803971814, 0.2721980352288112, 0.014637837189093061, -0.08661231943710898, 0.03183254620212218), rel=1e-12
    )
    assert ch.p_value == 0.6829268292682927 and ch.n == 22
    v = np.round(np.random.default_rng(8).normal(0.45, 1, size=60), 1)
    v[[3, 7]] = [np.nan, -np.inf]
    assert bootstrap_p_value(v) == 0.7796610169491526 == bootstrap_p_value(-v)


AQI_OLD = {
    "basic": (
        {
            "davies_bouldin": (1.4030635818452428, 1.7428327557874326),
            "dunn": (0.2449147039230702, 0.28096049268983914),
            "xie_beni": (0.4544743311912599, 0.8221915961075367),
            "calinski_harabasz": (6.6524206051583015, 16.868115534078893),
            "aqi": (0.27920755784800927, 0.3169068041765854),
        },
        0.0625,
    ),
    "percentile": (
        {
            "davies_bouldin": (1.1709703119487802, 1.51073948589097),
            "dunn": (0.28096049268983914, 0.3170062814566081),
            "xie_beni": (0.3934532933930365, 0.7611705583093132),
            "calinski_harabasz": (13.784067450612898, 23.99976237953349),
            "aqi": (0.3094457129659725, 0.34714495929454864),
        },
        0.0625,
    ),
}
AQI_MEAN = {
    "davies_bouldin": 1.3445403445503579,
    "dunn": 0.2963494028925059,
    "xie_beni": 0.5730007542558758,
    "calinski_harabasz": 18.61913458150432,
    "aqi": 0.32846919916533623,
}
AQI_SUB = {
    "davies_bouldin": (1.1475556623500818, 1.920892370443168),
    "dunn": (-0.013955581579455978, 0.3031251131971063),
    "xie_beni": (0.14453883412718516, 0.8879898673595283),
    "calinski_harabasz": (-9.011292871189763, 11.415475911234788),
    "aqi": (0.2038790619255077, 0.3395741655311363),
}


def test_aqi_resampling_unchanged():
    # the AQI resampler shares one Generator between subsample, bootstrap and permutations: all must be unchanged
    from geomprobe.aqi.resampling import resample_indices

    X, labels = _inputs()["Xq"], np.repeat(["a", "b", "c"], 10)
    for method, (ci, p) in AQI_OLD.items():
        r = resample_indices(X, labels, n_bootstrap=25, n_permutations=15, ci_method=method, seed=6, ci_level=0.8)
        for name, interval in ci.items():
            assert r.ci[name] == pytest.approx(interval, rel=1e-12), (method, name)
            assert r.bootstrap_mean[name] == pytest.approx(AQI_MEAN[name], rel=1e-12)
        assert r.p_value == p
    r = resample_indices(X, labels, n_bootstrap=20, n_permutations=10, max_points=18, seed=1)
    assert r.resample_n == 18 and r.p_value == 1 / 11
    for name, interval in AQI_SUB.items():
        assert r.ci[name] == pytest.approx(interval, rel=1e-12, abs=1e-12), name
