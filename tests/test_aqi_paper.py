"""The AQI paper variants against an independent re-implementation of each script's documented steps.

The reference below is written from docs/aqi.md ("The paper's scripts, step by step") with
scikit-learn and scipy, not from geomprobe: StandardScaler/TSNE/davies_bouldin_score/
calinski_harabasz_score and a pdist-based Dunn.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform
from sklearn.manifold import TSNE
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
from sklearn.preprocessing import StandardScaler

from geomprobe.aqi.paper import (
    davies_bouldin_sklearn_rules,
    dunn_script_rules,
    paper_aqi,
    paper_pool,
)
from geomprobe.aqi.stats import cluster_stats
from geomprobe.core.errors import GeomprobeError


@pytest.fixture(autouse=True)
def one_openmp_thread():
    # Barnes-Hut t-SNE on a few dozen points is 50x slower with OpenMP threads on a busy machine;
    # geomprobe and the reference run in the same process, so they see the same setting.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


# -- reference: the scripts' steps, written out independently ---------------------------------
def ref_dunn(E: np.ndarray, y: np.ndarray) -> float:
    D = squareform(pdist(E))
    a, b = y == 0, y == 1
    cross = D[a][:, b].min()
    if cross == 0:
        return 0.001
    diam = max(D[a][:, a].max(), D[b][:, b].max())
    return 0.001 if diam == 0 else cross / diam


def ref_dbs_dunn(X32: np.ndarray, y: np.ndarray, iters: int) -> dict[str, float]:
    Z = StandardScaler().fit_transform(X32)
    E = TSNE(n_components=3, perplexity=30, random_state=42, max_iter=iters).fit_transform(Z)
    dbs = davies_bouldin_score(E, y)
    di = ref_dunn(E, y)
    return {"davies_bouldin": dbs, "dunn": di, "aqi": 0.5 / (1 + dbs) + 0.5 * di / (1 + di)}


def ref_chi_xb_raw(X32: np.ndarray, y: np.ndarray, cap: float) -> tuple[float, float]:
    X = X32.astype(np.float64)
    perplexity = min(cap, max(5.0, float(len(X) - 2)))
    E = TSNE(
        n_components=3, random_state=42, perplexity=perplexity, max_iter=500, metric="euclidean", init="pca", learning_rate="auto"
    ).fit_transform(X)
    chi = calinski_harabasz_score(E.astype(np.float64), y)
    centers = np.array([E[y == c].mean(0) for c in (0, 1)], dtype=np.float64)
    ssw = sum(((E[y == c].astype(np.float64) - centers[c]) ** 2).sum() for c in (0, 1))
    sep = ((centers[0] - centers[1]) ** 2).sum()
    return chi, (math.inf if sep <= 1e-12 else ssw / (len(E) * sep))


def ref_normalise(raw: dict[str, tuple[float, float]]) -> dict[str, float]:
    chi = np.array([c for c, _ in raw.values()])
    xb = np.array([x for _, x in raw.values()])
    q75, q25 = np.percentile(xb, [75, 25])
    out = {}
    for key, (c, x) in raw.items():
        cn = 100 * (c - chi.min()) / (chi.max() - chi.min()) if chi.max() - chi.min() >= 1e-9 else 50.0
        z = np.clip((x - np.median(xb)) / (q75 - q25 + 1e-9), -500, 500)
        xn = max(100 * (1 - 1 / (1 + np.exp(-z))), 10.0)
        out[key] = 0.5 * min(max(cn, 0), 100) + 0.5 * min(xn, 100)
    return out


def embeddings(n_per_class: int, d: int = 12, seed: int = 0, shift: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2 * n_per_class, d)).astype(np.float32)
    y = np.repeat([0, 1], n_per_class)
    X[y == 1, :3] += shift
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


# -- pooling ----------------------------------------------------------------------------------
def test_paper_pool_follows_each_script():
    torch.manual_seed(0)
    h = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    # dbs-dunn: every position, padding included, in the model's dtype, then float32
    np.testing.assert_array_equal(paper_pool(h, mask, "dbs-dunn-paper"), h.mean(1).float().numpy())
    # chi-xb: masked mean over real tokens only
    got = paper_pool([h[:2], h[2:]], [mask[:2], mask[2:]], "chi-xb-paper")
    for i in range(3):
        real = h[i, mask[i].bool()].float()
        np.testing.assert_allclose(got[i], real.sum(0).numpy() / mask[i].sum().item(), rtol=2e-2, atol=2e-2)
    assert not np.allclose(got[1], paper_pool(h, None, "dbs-dunn-paper")[1], atol=1e-3)  # padding differs
    with pytest.raises(GeomprobeError, match="attention mask"):
        paper_pool(h, None, "chi-xb-paper")


# -- the two scripts --------------------------------------------------------------------------
def test_dbs_dunn_paper_equals_script_steps():
    X, y = embeddings(20, seed=1)  # 40 rows > perplexity 30
    groups = np.array(["b_axiom", "a_axiom"] * 20)
    X = np.vstack([X, X + np.float32(0.1)])
    y = np.concatenate([y, y])
    groups = np.concatenate([groups, groups])
    got = paper_aqi(X, y, variant="dbs-dunn-paper", groups=groups)
    assert got.groups == ["a_axiom", "b_axiom"]
    order = []
    for g in ("a_axiom", "b_axiom"):
        rows = np.flatnonzero(groups == g)
        order.append(rows)
        ref = ref_dbs_dunn(X[rows], y[rows], 3000)
        for key, value in ref.items():
            assert got.results[g][key] == pytest.approx(value, rel=1e-5), (g, key)
    rows = np.concatenate(order)
    ref = ref_dbs_dunn(X[rows], y[rows], 5000)
    for key, value in ref.items():
        assert got.results["overall"][key] == pytest.approx(value, rel=1e-5), ("overall", key)


def test_chi_xb_paper_equals_script_steps():
    X, y = embeddings(12, seed=2)
    groups = np.array(["x", "y", "z"] * 8, dtype=object)
    groups[:4] = "tiny"  # 4 rows: the script skips the group (NaN) and leaves it out of overall
    got = paper_aqi(X, y, variant="chi-xb-paper", groups=groups)
    raw, kept = {}, []
    for g in ("x", "y", "z"):
        rows = np.flatnonzero(groups == g)
        kept.append(rows)
        raw[g] = ref_chi_xb_raw(X[rows], y[rows], 30.0)
    rows = np.concatenate(kept)
    raw["overall"] = ref_chi_xb_raw(X[rows], y[rows], 50.0)
    ref = ref_normalise(raw)
    for key in raw:
        assert got.results[key]["calinski_harabasz"] == pytest.approx(raw[key][0], rel=1e-5)
        assert got.results[key]["xie_beni"] == pytest.approx(raw[key][1], rel=1e-5)
        assert got.results[key]["aqi"] == pytest.approx(ref[key], rel=1e-5, abs=1e-6)
    assert math.isnan(got.results["tiny"]["aqi"])
    assert any("tiny" in note for note in got.notes)
    assert set(got.to_dict()) >= {"variant", "results", "settings", "notes", "sklearn_version"}
    import sklearn

    from geomprobe.aqi.paper import reproduces_scripts

    assert got.sklearn_version == got.to_dict()["sklearn_version"] == sklearn.__version__
    warned = any("reproduce only under scikit-learn 1.5-1.6" in note for note in got.notes)
    assert warned == (not reproduces_scripts(sklearn.__version__))


def test_which_sklearn_reproduces_the_scripts():
    from geomprobe.aqi.paper import reproduces_scripts

    assert [reproduces_scripts(v) for v in ("1.4.2", "1.5.0", "1.5.2", "1.6.1", "1.7.0", "1.9.1", "2.0", "dev")] == [
        False,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_paper_variants_refuse_what_the_scripts_cannot_run():
    X, y = embeddings(10)
    with pytest.raises(GeomprobeError, match="at least 31"):
        paper_aqi(X, y, variant="dbs-dunn-paper")
    with pytest.raises(GeomprobeError, match="unknown paper variant"):
        paper_aqi(X, y, variant="dbs-dunn")
    with pytest.raises(GeomprobeError, match="one group per row"):
        paper_aqi(X, y, variant="chi-xb-paper", groups=["a"])


def test_script_rules_at_degenerate_geometry_match_sklearn_and_script():
    # all centroids coincide: sklearn returns 0 (geomprobe's own DBS is inf)
    X = np.array([[0.0, 1], [0, -1], [1, 0], [-1, 0]])
    y = np.array([0, 0, 1, 1])
    stats = cluster_stats([torch.from_numpy(X[y == c]) for c in (0, 1)])
    assert davies_bouldin_sklearn_rules(stats) == davies_bouldin_score(X, y) == 0.0
    # three clusters, two of them with the same centroid: that pair is skipped
    X3 = np.array([[0.0, 1], [0, -1], [1, 0], [-1, 0], [5, 5], [6, 5]])
    y3 = np.array([0, 0, 1, 1, 2, 2])
    stats3 = cluster_stats([torch.from_numpy(X3[y3 == c]) for c in (0, 1, 2)])
    assert davies_bouldin_sklearn_rules(stats3) == pytest.approx(davies_bouldin_score(X3, y3), rel=1e-12)
    # Dunn fallbacks: a shared point, or zero diameters
    assert dunn_script_rules(np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([1.0, 2.0])) == 0.001
    assert dunn_script_rules(np.array([[0.0, 3.0], [3.0, 0.0]]), np.array([0.0, 0.0])) == 0.001
    assert dunn_script_rules(np.array([[0.0, 3.0], [3.0, 0.0]]), np.array([1.0, 2.0])) == 1.5
