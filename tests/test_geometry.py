"""Cluster indices vs scikit-learn and brute-force references; resampling; pooled AQI; labels."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

from geomprobe.activations.store import open_cache, write_cache
from geomprobe.aqi import (
    INDICES,
    DegenerateClustersWarning,
    LayerWeightPooler,
    aqi_by_layer,
    aqi_from_indices,
    chi_xb_scores,
    choose_labels,
    cluster_indices,
    cluster_report,
    davies_bouldin,
    pooled_aqi,
    pooled_aqi_arrays,
    reduce_activations,
    register_index,
    resample_indices,
    streamed_cluster_report,
    unregister_index,
)
from geomprobe.core.errors import GeomprobeError

RTOL = 1e-6


# ------------------------------------------------------------------ brute-force references
def brute_indices(X, y) -> dict[str, float]:
    """Loops and direct differences in float64, no expansion formula anywhere."""
    X = np.asarray(X, dtype=np.float64)
    classes = np.unique(y)
    clusters = [X[y == c] for c in classes]
    n, k = len(X), len(clusters)
    cents = [A.mean(0) for A in clusters]
    diam = max(cdist(A, A).max() for A in clusters)
    between = min(cdist(clusters[i], clusters[j]).min() for i in range(k) for j in range(i + 1, k))
    ssw = sum(float(((A - c) ** 2).sum()) for A, c in zip(clusters, cents))
    s = [float(np.sqrt(((A - c) ** 2).sum(1)).mean()) for A, c in zip(clusters, cents)]
    cd = [[float(np.sqrt(((ci - cj) ** 2).sum())) for cj in cents] for ci in cents]
    dbs = float(np.mean([max((s[i] + s[j]) / cd[i][j] for j in range(k) if j != i) for i in range(k)]))
    mean = X.mean(0)
    ssb = sum(len(A) * float(((c - mean) ** 2).sum()) for A, c in zip(clusters, cents))
    chi = ssb * (n - k) / (ssw * (k - 1))
    min_c = min(cd[i][j] for i in range(k) for j in range(i + 1, k))
    return {"davies_bouldin": dbs, "dunn": between / diam, "xie_beni": ssw / (n * min_c**2), "calinski_harabasz": chi}


def assert_close(got: dict, ref: dict, rtol: float = RTOL) -> None:
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, rel=rtol, abs=0), name


def blobs(rng, n=300, d=16, k=2, shift=0.5):
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    return rng.normal(size=(n, d)) + shift * y[:, None], y


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("k", [2, 3, 4])
def test_matches_sklearn_and_brute_force_on_random_data(k):
    rng = np.random.default_rng(k)
    X, y = blobs(rng, n=400, d=24, k=k)
    got = cluster_indices(X, y, block=64)  # many blocks, incl. partial and diagonal ones
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, y), rel=RTOL)
    assert got["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, y), rel=RTOL)
    assert_close(got, brute_indices(X, y))
    assert got["aqi"] == pytest.approx(0.5 / (1 + got["davies_bouldin"]) + 0.5 * got["dunn"] / (1 + got["dunn"]))


def test_string_labels_and_block_sizes_agree():
    rng = np.random.default_rng(1)
    X, y = blobs(rng, n=257, d=9)
    names = np.where(y == 1, "harmful", "harmless")
    ref = cluster_indices(X, y, block=4096)
    for block in (5, 64):
        assert_close(cluster_indices(X, names, block=block), ref, rtol=1e-12)


def test_large_offset_float32():
    rng = np.random.default_rng(2)
    X, y = blobs(rng, n=600, d=576, shift=0.2)
    X32 = (X + 3e4).astype(np.float32)  # |a|^2+|b|^2-2ab in float32 loses every digit here
    assert X32.dtype == np.float32
    got = cluster_indices(X32, y, block=128)
    assert_close(got, brute_indices(X32, y))


def test_duplicate_points_within_and_across_clusters():
    rng = np.random.default_rng(3)
    X, y = blobs(rng, n=200, d=8, shift=3.0)
    X = np.vstack([X, np.repeat(X[:5], 20, axis=0)])  # many within-cluster duplicates
    y = np.concatenate([y, np.repeat(y[:5], 20)])
    assert_close(cluster_indices(X, y, block=32), brute_indices(X, y))
    # a point shared by the two clusters: Dunn is exactly 0
    X2 = np.vstack([X, X[y == 0][:1]])
    y2 = np.concatenate([y, [1]])
    with pytest.warns(DegenerateClustersWarning, match="coincides"):
        got = cluster_indices(X2, y2, block=32)
    assert got["dunn"] == 0.0
    assert_close({k: v for k, v in got.items() if k != "dunn"}, {k: v for k, v in brute_indices(X2, y2).items() if k != "dunn"})


def test_singleton_cluster():
    rng = np.random.default_rng(4)
    X = np.vstack([rng.normal(size=(50, 6)), rng.normal(size=(1, 6)) + 4, rng.normal(size=(30, 6)) + 8])
    y = np.array([0] * 50 + [1] + [2] * 30)
    got = cluster_indices(X, y)
    assert_close(got, brute_indices(X, y))
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, y), rel=RTOL)


def test_touching_clusters_with_offset():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(300, 40))
    B = rng.normal(size=(300, 40)) + 2.0
    B[17] = A[123] + 1e-6 * rng.normal(size=40)  # nearly touching: tiny gap vs large norms
    X = (np.vstack([A, B]) + 500.0).astype(np.float32)
    y = np.repeat([0, 1], 300)
    report = cluster_report(X, y, block=64)
    ref = brute_indices(X, y)
    assert report.dunn == pytest.approx(ref["dunn"], rel=RTOL)
    assert report.min_between == pytest.approx(cdist(X[y == 0].astype(float), X[y == 1].astype(float)).min(), rel=RTOL)


def near_duplicate_clusters(seed: int):
    """Two clusters sharing a point up to 1e-9, one coordinate offset by 1e6 and the others near 0.

    Centring rounds the near-zero coordinates to about 1e-16 absolute, a 1e-7 relative change in
    a 1e-9 gap: the pair search must take differences of the rows as given.
    """
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(40, 6)) * 300.0
    B = rng.normal(size=(40, 6)) * 300.0 + 50.0
    B[7] = A[11]
    B[7, 3] += 1e-9
    X = np.vstack([A, B])
    X[:, 0] += 1e6
    return X, np.repeat([0, 1], 40)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dunn_exact_for_near_duplicates_far_from_origin(seed):
    X, y = near_duplicate_clusters(seed)
    nearest = cdist(X[y == 0], X[y == 1]).min()  # scipy: direct float64 differences
    diameter = max(cdist(X[y == c], X[y == c]).max() for c in (0, 1))
    assert 5e-10 < nearest < 2e-9
    for block in (None, 16):
        report = cluster_report(X, y, device="cpu", block=block)
        assert report.min_between == pytest.approx(nearest, rel=1e-12)
        assert report.max_diameter == pytest.approx(diameter, rel=1e-12)
        assert report.dunn == pytest.approx(nearest / diameter, rel=1e-12)


def test_streamed_dunn_exact_for_near_duplicates(tmp_path):
    # float32 as a cache stores it: the gap is one float32 step of a coordinate near 1, the
    # other coordinate sits at 1e6 (ulp 0.0625), so centring would round the gap away
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(60, 4)) * 3.0).astype(np.float32)
    y = np.repeat([0, 1], 30)
    X[y == 1] += np.float32(4.0)
    X[35] = X[5]
    X[35, 1] = np.nextafter(X[5, 1], np.float32(np.inf))
    X[:, 0] += np.float32(1e6)
    X64 = X.astype(np.float64)
    nearest = cdist(X64[y == 0], X64[y == 1]).min()
    path = write_cache(tmp_path / "dup.h5", {"blocks.0.hook_resid_post": X}, y, ["a", "b"])
    with open_cache(path) as cache:
        for block_rows in (None, 16):
            streamed = streamed_cluster_report(
                cache, "blocks.0.hook_resid_post", "last", np.arange(60), y, device="cpu", block_rows=block_rows
            )
            assert streamed.min_between == pytest.approx(nearest, rel=1e-12)
    assert cluster_report(X, y, device="cpu").min_between == pytest.approx(nearest, rel=1e-12)


def test_davies_bouldin_degenerate_cases_differ_from_sklearn_as_documented():
    # all centroids coincide: scikit-learn returns 0, geomprobe inf (merged clusters)
    X = np.array([[0.0, 1], [0, -1], [1, 0], [-1, 0]])
    y = np.array([0, 0, 1, 1])
    assert davies_bouldin_score(X, y) == 0.0
    with pytest.warns(DegenerateClustersWarning, match="centroids coincide"):
        assert cluster_indices(X, y)["davies_bouldin"] == math.inf
    # one pair of coinciding centroids among three: scikit-learn skips the pair, geomprobe counts it as inf
    X3 = np.vstack([X, [[5.0, 6], [7, 6]]])  # global mean (2, 2): centring is exact
    y3 = np.array([0, 0, 1, 1, 2, 2])
    cents = np.array([[0.0, 0], [0, 0], [6, 6]])
    spread = np.array([1.0, 1.0, 1.0])
    skipped = np.mean(
        [
            max(
                (spread[i] + spread[j]) / np.linalg.norm(cents[i] - cents[j])
                for j in range(3)
                if j != i and np.linalg.norm(cents[i] - cents[j]) > 0
            )
            for i in range(3)
        ]
    )
    assert davies_bouldin_score(X3, y3) == pytest.approx(skipped, rel=1e-12)
    with pytest.warns(DegenerateClustersWarning):
        assert cluster_indices(X3, y3)["davies_bouldin"] == math.inf
    # away from these cases the two agree
    X3[0, 0] += 0.25
    assert davies_bouldin(X3, y3) == pytest.approx(davies_bouldin_score(X3, y3), rel=1e-12)


def test_hypothesis_style_random_configurations():
    rng = np.random.default_rng(6)
    for trial in range(25):
        n = int(rng.integers(6, 60))
        d = int(rng.integers(1, 12))
        k = int(rng.integers(2, 4))
        y = rng.integers(0, k, n)
        y[:k] = np.arange(k)
        scale = 10.0 ** rng.integers(-3, 4)
        offset = 10.0 ** rng.integers(0, 5)
        X = rng.normal(size=(n, d)) * scale + offset
        if trial % 3 == 0:
            X = np.round(X, 0 if scale >= 1 else 3)  # lattice: many equal distances and duplicates
        X = X.astype(np.float32 if trial % 2 else np.float64)
        ref = brute_indices(X, y)
        if not all(np.isfinite(list(ref.values()))) or ref["dunn"] == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateClustersWarning)
            assert_close(cluster_indices(X, y, block=8), ref)


# ------------------------------------------------------------------ identities and invariance
def test_chi_times_xbi_identity_for_two_clusters():
    rng = np.random.default_rng(7)
    X, y = blobs(rng, n=123, d=5)
    got = cluster_indices(X, y)
    n, n1 = len(y), int((y == 1).sum())
    n0 = n - n1
    assert got["calinski_harabasz"] * got["xie_beni"] == pytest.approx((n - 2) * n0 * n1 / n**2, rel=1e-10)


def test_aqi_is_bounded_and_similarity_invariant():
    rng = np.random.default_rng(8)
    X, y = blobs(rng, n=200, d=10)
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a = cluster_indices(X, y)
    b = cluster_indices(1e3 * X @ Q + 7.0, y)
    assert 0.0 <= a["aqi"] <= 1.0
    for name in ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz", "aqi"):
        assert b[name] == pytest.approx(a[name], rel=1e-8)
    assert aqi_from_indices(math.inf, math.inf) == 0.5
    assert aqi_from_indices(0.0, 0.0, gamma=1.0) == 1.0


# ------------------------------------------------------------------ degenerate geometry
def test_constant_activations_have_defined_values():
    X = np.full((10, 4), 3.25, dtype=np.float32)
    y = np.repeat([0, 1], 5)
    with pytest.warns(DegenerateClustersWarning, match="constant activations"):
        got = cluster_indices(X, y)
    assert got == {"davies_bouldin": math.inf, "dunn": 0.0, "xie_beni": math.inf, "calinski_harabasz": 0.0, "aqi": 0.0}


def test_zero_diameters_with_distinct_clusters():
    X = np.array([[0.1, 0.2]] * 4 + [[5.0, 1.0]] * 3)
    y = np.array([0] * 4 + [1] * 3)
    with pytest.warns(DegenerateClustersWarning, match="single repeated point"):
        got = cluster_indices(X, y)
    assert got["dunn"] == math.inf and got["calinski_harabasz"] == math.inf
    assert got["davies_bouldin"] == 0.0 and got["xie_beni"] == 0.0 and got["aqi"] == 1.0


# ------------------------------------------------------------------ shared per-cluster statistics
def test_statistics_accumulated_over_blocks_match_numpy():
    """The streamed path's way (raw rows in blocks, shifted afterwards) equals a direct computation."""
    import torch

    from geomprobe.aqi.stats import ClusterStatsAccumulator

    rng = np.random.default_rng(22)
    X = rng.normal(size=(70, 5)) + 40.0  # an offset, so the shift matters
    y = rng.integers(0, 3, 70)
    X[y == 2] = [0.1, 0.7, 1 / 3, 40.3, -2.9]  # one constant cluster, spread over several blocks,
    assert not np.array_equal(X[y == 2].sum(0) / (y == 2).sum(), X[y == 2][0])  # whose mean is off by rounding
    acc = ClusterStatsAccumulator(3, 5)
    for s in range(0, 70, 9):
        for i in range(3):
            acc.add_rows(i, torch.from_numpy(X[s : s + 9][y[s : s + 9] == i]))
    mu = acc.overall_mean()
    acc.fix_centroids(shift=mu)
    for s in range(0, 70, 9):
        for i in range(3):
            acc.add_scatter(i, torch.from_numpy(X[s : s + 9][y[s : s + 9] == i]) - mu)
    stats = acc.result()

    Z = X - X.mean(0)
    for i in range(3):
        A = Z[y == i]
        c = A.mean(0)
        assert stats.counts[i] == len(A)
        assert np.allclose(stats.centroids[i], c, rtol=0, atol=1e-12)
        assert stats.ssw[i] == pytest.approx(((A - c) ** 2).sum(), rel=1e-9, abs=1e-12)
        assert stats.mean_dist[i] == pytest.approx(np.linalg.norm(A - c, axis=1).mean(), rel=1e-9, abs=1e-12)
    assert stats.ssw[2] == 0.0 and stats.mean_dist[2] == 0.0  # exactly, despite the rounding of the mean
    assert np.array_equal(stats.centroids[2], (torch.from_numpy(X[y == 2][0]) - mu).numpy())


# ------------------------------------------------------------------ index registry
def test_registered_index_is_reported_by_both_paths(tmp_path):
    rng = np.random.default_rng(21)
    X, y = blobs(rng, n=90, d=6, k=3, shift=2.0)
    X = X.astype(np.float32)  # as a cache stores it, so both paths see the same numbers

    @register_index("gap_to_spread")
    def gap_to_spread(stats):
        """Closest pair of centroids over the largest mean distance to a centroid."""
        return stats.centroid_distances[stats.off_diagonal].min() / stats.mean_dist.max()

    try:
        # brute force: explicit loops over clusters and centroid pairs, no shared statistics
        X64 = X.astype(np.float64)
        cents = [X64[y == c].mean(0) for c in range(3)]
        gap = min(np.linalg.norm(cents[i] - cents[j]) for i in range(3) for j in range(i + 1, 3))
        spread = max(np.linalg.norm(X64[y == c] - cents[c], axis=1).mean() for c in range(3))
        expected = gap / spread

        report = cluster_report(X, y, device="cpu")
        assert report.extra == {"gap_to_spread": pytest.approx(expected, rel=1e-12)}
        assert report.to_dict()["extra"]["gap_to_spread"] == report.extra["gap_to_spread"]
        assert cluster_indices(X, y, device="cpu")["gap_to_spread"] == report.extra["gap_to_spread"]
        assert_close(report.indices, brute_indices(X, y))  # the paper's four are unaffected

        path = write_cache(tmp_path / "r.h5", {"blocks.0.hook_resid_post": X}, y, ["a", "b", "c"])
        with open_cache(path) as cache:
            streamed = streamed_cluster_report(cache, "blocks.0.hook_resid_post", "last", np.arange(90), y, device="cpu")
        assert streamed.extra["gap_to_spread"] == pytest.approx(expected, rel=1e-12)

        with pytest.raises(GeomprobeError, match="already registered"):
            register_index("gap_to_spread")(gap_to_spread)
    finally:
        unregister_index("gap_to_spread")
    assert "gap_to_spread" not in INDICES
    assert cluster_report(X, y, device="cpu").extra == {}
    with pytest.raises(GeomprobeError, match="cannot be removed"):
        unregister_index("dunn")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.ones((4, 2)), [0, 0, 0, 0], "two or more clusters"),
        (np.ones((4, 2)), [0, 1, 1], "labels for 4"),
        (np.array([[0.0, np.nan], [1, 1], [2, 2], [3, 3]]), [0, 0, 1, 1], "NaN or inf"),
        (np.array([[0.0, np.inf], [1, 1], [2, 2], [3, 3]]), [0, 0, 1, 1], "NaN or inf"),
        (np.ones(4), [0, 0, 1, 1], "2-D"),
        (np.ones((2, 3)), [0, 1], "single point"),
        (np.ones((0, 3)), [], "empty"),
    ],
)
def test_bad_input_raises_clear_error(X, y, match):
    with pytest.raises(GeomprobeError, match=match):
        cluster_indices(X, y)


# ------------------------------------------------------------------ resampling
def test_bootstrap_replicate_matches_direct_indices():
    from geomprobe.aqi.resampling import exact_square_distances, replicate_indices

    rng = np.random.default_rng(9)
    X, y = blobs(rng, n=80, d=6)
    Z = X - X.mean(0)
    D = exact_square_distances(Z)
    members = [rng.choice(np.flatnonzero(y == c), size=int((y == c).sum())) for c in (0, 1)]
    got = replicate_indices(Z, D, members, 0.5)
    idx = np.concatenate(members)
    assert_close(got, brute_indices(Z[idx], y[idx]), rtol=1e-9)


def test_resampling_is_seeded_and_sensible():
    rng = np.random.default_rng(10)
    X, y = blobs(rng, n=120, d=8, shift=2.0)
    a = resample_indices(X, y, n_bootstrap=60, n_permutations=60, seed=3)
    b = resample_indices(X, y, n_bootstrap=60, n_permutations=60, seed=3)
    assert a == b
    est = cluster_indices(X, y)["aqi"]
    lo, hi = a.ci["aqi"]
    assert lo <= hi and lo - 0.05 <= est <= hi + 0.05
    assert a.p_value == pytest.approx(1 / 61)  # well separated: no permutation reaches it
    noise = resample_indices(rng.normal(size=(120, 8)), y, n_bootstrap=0, n_permutations=60, seed=0)
    assert noise.p_value > 0.05


def test_resampling_subsample_is_recorded():
    rng = np.random.default_rng(11)
    X, y = blobs(rng, n=300, d=5)
    res = resample_indices(X, y, n_bootstrap=10, n_permutations=10, max_points=100)
    assert res.subsampled and res.resample_n <= 101 and not math.isnan(res.subsample_aqi)


def test_resampling_needs_two_points_per_cluster():
    X = np.arange(12.0).reshape(6, 2)
    with pytest.raises(GeomprobeError, match="at least 2"):
        resample_indices(X, [0, 0, 0, 0, 0, 1])


# ------------------------------------------------------------------ variants and reduction
def test_chi_xb_variant_matches_formula():
    chi = np.array([10.0, 20.0, 40.0])
    xb = np.array([0.5, 0.2, 0.1])
    q1, med, q3 = np.percentile(xb, [25, 50, 75])
    expected_xb = np.maximum(10, 100 * (1 - 1 / (1 + np.exp(-(xb - med) / (q3 - q1)))))
    expected = 0.5 * np.array([0.0, 100 / 3, 100.0]) + 0.5 * expected_xb
    assert np.allclose(chi_xb_scores(chi, xb), expected)
    assert np.isnan(chi_xb_scores([1.0], [1.0])).all()


def test_pca_reduction_matches_sklearn_pipeline():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(12)
    X, y = blobs(rng, n=100, d=12)
    Z = reduce_activations(X, "pca:3")
    ref = PCA(3, random_state=0).fit_transform(StandardScaler().fit_transform(X))
    assert np.allclose(np.abs(Z), np.abs(ref))
    with pytest.raises(GeomprobeError, match="unknown reduction"):
        reduce_activations(X, "umap")


# ------------------------------------------------------------------ cache-level API
@pytest.fixture()
def layered_cache(tmp_path):
    """Four layers; only layer 2 separates the classes; a third label and unlabelled rows."""
    rng = np.random.default_rng(13)
    n, d = 120, 16
    labels = np.array([0, 1] * (n // 2))
    labels[:6] = 2  # "control"
    labels[6:9] = -1  # unlabelled
    acts = {}
    for layer in range(4):
        X = rng.normal(size=(n, d))
        if layer == 2:
            X[:, :3] += 3.0 * (labels == 1)[:, None]
        acts[f"blocks.{layer}.hook_resid_post"] = X.astype(np.float32)
    path = write_cache(
        tmp_path / "c.h5", acts, labels, ["harmless", "harmful", "control"], attrs={"model_id": "toy", "n_layers": 4}
    )
    return path, labels


def test_aqi_by_layer_finds_the_separating_layer(layered_cache):
    path, labels = layered_cache
    results = aqi_by_layer(path, positive_label="harmful", n_bootstrap=20, n_permutations=20, variants=["chi-xb"])
    assert [r.layer for r in results] == [0, 1, 2, 3]
    best = max(results, key=lambda r: r.aqi)
    assert best.layer == 2 and best.p_value == pytest.approx(1 / 21)
    # positive vs the rest keeps control rows and drops unlabelled ones
    assert best.n == int((labels >= 0).sum())
    assert best.n_per_class == {"not-harmful": int(((labels == 0) | (labels == 2)).sum()), "harmful": int((labels == 1).sum())}
    record = best.to_record()
    for key in (
        "hook",
        "layer",
        "n",
        "davies_bouldin",
        "dunn",
        "xie_beni",
        "calinski_harabasz",
        "aqi",
        "aqi_ci_low",
        "aqi_ci_high",
        "p_value",
        "pooling",
        "dtype",
    ):
        assert key in record
    assert record["dtype"] == "float64" and "chi-xb" in record["variants"]


def test_label_choice(layered_cache):
    path, labels = layered_cache
    with pytest.raises(GeomprobeError, match="choose --positive-label"):
        aqi_by_layer(path, n_bootstrap=0, n_permutations=0)
    with pytest.raises(GeomprobeError, match="not in this cache"):
        aqi_by_layer(path, positive_label="nope", n_bootstrap=0, n_permutations=0)
    r = aqi_by_layer(path, "resid_post:2", label_pair=("harmless", "harmful"), n_bootstrap=0, n_permutations=0)[0]
    assert r.n == int(((labels == 0) | (labels == 1)).sum()) and list(r.n_per_class) == ["harmless", "harmful"]
    choice = choose_labels(np.array([1, 0, -1, 1]), ["a", "b"])
    assert choice.rows.tolist() == [0, 1, 3] and choice.y.tolist() == [1, 0, 1] and choice.names == ("a", "b")


def test_pooled_aqi_puts_weight_on_the_signal_layer(layered_cache):
    path, _ = layered_cache
    pooled = pooled_aqi(path, positive_label="harmful", seed=0)
    w = np.array(pooled.weights)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert pooled.hooks[int(np.argmax(w))] == "blocks.2.hook_resid_post" and w.max() > 0.9
    assert 0 < pooled.heldout_aqi <= 1 and pooled.n_train + pooled.n_test == 117
    rec = pooled.to_record()
    assert "blocks.2.hook_resid_post" in rec["weights_by_hook"]


def test_layer_weight_pooler_mixes_layers_that_share_signal():
    rng = np.random.default_rng(14)
    n, d = 400, 6
    y = np.repeat([0, 1], n // 2)
    signal = 0.8 * y[:, None] * np.ones(d)
    layers = [signal + rng.normal(size=(n, d)) for _ in range(2)] + [rng.normal(size=(n, d))]
    pooler = LayerWeightPooler(sparsity=0.0).fit(layers, y)
    w = pooler.weights_
    assert w[2] < 0.05 and w[0] > 0.2 and w[1] > 0.2  # averaging independent noise helps; noise layer dropped
    assert pooler.transform(layers).shape == (n, d)


def test_pooled_needs_enough_rows():
    rng = np.random.default_rng(15)
    with pytest.raises(GeomprobeError, match="at least 4 per class"):
        pooled_aqi_arrays([rng.normal(size=(7, 3))], [0, 0, 0, 0, 1, 1, 1])
