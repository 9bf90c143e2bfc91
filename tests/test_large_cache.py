"""Metric stages on caches larger than memory: block-wise reading, equal to the in-memory results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

from geomprobe.activations import blocks as chunked
from geomprobe.activations.store import open_cache, write_cache
from geomprobe.aqi import aqi_by_layer, cluster_report
from geomprobe.aqi.streamed import streamed_cluster_report
from geomprobe.subspace.activations import activation_overlap_by_layer

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")


def _cache(path, n, d, seed=0, shift=1.0, unlabelled=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = {
        h: (rng.normal(size=(n, d)) + shift * (i + 1) * y[:, None] * rng.normal(size=d)).astype(np.float32)
        for i, h in enumerate(HOOKS)
    }
    y = y.copy()
    y[:unlabelled] = -1  # unlabelled rows are dropped by both paths
    write_cache(path, X, y, ["safe", "unsafe", "none"])  # -1 written as is (editing it later would fail the checksum)
    return X, y


@pytest.fixture()
def small_blocks(monkeypatch):
    monkeypatch.setattr(chunked, "BLOCK_BYTES", 8 * 24 * 8)  # 16-row blocks: many block pairs


def test_streamed_aqi_equals_in_memory(tmp_path, small_blocks):
    path = tmp_path / "c.h5"
    X, y = _cache(path, 150, 24, unlabelled=7)
    kw = dict(n_bootstrap=30, n_permutations=30, max_points=60, device="cpu")
    streamed = aqi_by_layer(path, stream=True, **kw)
    memory = aqi_by_layer(path, stream=False, **kw)
    for s, m in zip(streamed, memory):
        for name in ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz", "aqi", "min_between", "max_diameter"):
            assert getattr(s, name) == pytest.approx(getattr(m, name), rel=1e-10), name
        # the resampling draws the same subsample and replicates: identical intervals and p-value
        assert s.ci == m.ci and s.p_value == m.p_value and s.n == m.n == 143
    keep = y >= 0
    Xk = X[HOOKS[1]][keep].astype(np.float64)
    assert streamed[1].davies_bouldin == pytest.approx(davies_bouldin_score(Xk, y[keep]), rel=1e-9)
    assert streamed[1].calinski_harabasz == pytest.approx(calinski_harabasz_score(Xk, y[keep]), rel=1e-9)
    # Dunn against a brute-force float64 loop
    from scipy.spatial.distance import cdist

    a, b = Xk[y[keep] == 0], Xk[y[keep] == 1]
    dunn = cdist(a, b).min() / max(cdist(a, a).max(), cdist(b, b).max())
    assert streamed[1].dunn == pytest.approx(dunn, rel=1e-12)


def test_streamed_cluster_report_degenerate(tmp_path, small_blocks):
    """A constant cluster keeps its exact-zero scatter when streamed, like the in-memory path."""
    X = np.vstack([np.ones((20, 24)), np.random.default_rng(1).normal(size=(30, 24))]).astype(np.float32)
    y = np.array([0] * 20 + [1] * 30)
    path = write_cache(tmp_path / "d.h5", {HOOKS[0]: X}, y, ["a", "b"])
    with open_cache(path) as c:
        s = streamed_cluster_report(c, HOOKS[0], "last", np.arange(50), y, device="cpu")
    m = cluster_report(X, y, device="cpu")
    assert s.diameters[0] == 0.0 and s.indices == pytest.approx(m.indices, rel=1e-10)


def test_streamed_subspace_equals_in_memory(tmp_path, small_blocks):
    path = tmp_path / "c.h5"
    _cache(path, 200, 24, unlabelled=5)
    for kw in ({"energy": 0.8}, {"k": 3}, {"k": 4, "center": False}):
        s = activation_overlap_by_layer(path, labels=("safe", "unsafe"), stream=True, device="cpu", **kw)
        m = activation_overlap_by_layer(path, labels=("safe", "unsafe"), stream=False, device="cpu", method="gram", **kw)
        for a, b in zip(s, m):
            assert (a.k_a, a.k_b, a.n_a, a.n_b) == (b.k_a, b.k_b, b.n_a, b.n_b)
            for name in ("mso", "energy_a", "energy_b", "mean_diff_norm", "mean_diff_in_a", "mean_diff_in_b"):
                assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-12), name
            assert np.allclose(a.cosines, b.cosines, atol=1e-9)
            assert a.svd_method == "gram(streamed)"


def test_needs_streaming_follows_memory():
    assert not chunked.needs_streaming(100, 64)
    assert chunked.needs_streaming(10**9, 4096)


# -- a cache larger than the memory the process may use --------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from geomprobe.aqi import aqi_by_layer
    from geomprobe.activations.store import open_cache
    from geomprobe.subspace.activations import activation_overlap_by_layer
    from geomprobe.activations import blocks as chunked

    aqi_path, sub_path, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # warm up every code path on a tiny slice so lazy imports and allocator pools exist before the limit
    with open_cache(aqi_path) as c:
        c.read(c.hooks[0], rows=slice(0, 4))
    a = np.ones((64, 64))
    np.linalg.eigh(a @ a), torch.linalg.eigh(torch.from_numpy(a) @ torch.from_numpy(a))  # BLAS/LAPACK buffers
    page = resource.getpagesize()
    used = int(open("/proc/self/statm").read().split()[0]) * page
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom, resource.RLIM_INFINITY))
    chunked.BLOCK_BYTES = 4 << 20  # fixed block size: the peak does not depend on free RAM at this moment
    out = {"headroom": headroom}
    with open_cache(aqi_path) as c:
        out["cache_bytes"] = c.n_prompts * c.d_model * 4
        try:
            c.read(c.hooks[0])
            out["whole_read"] = "ok"
        except MemoryError:
            out["whole_read"] = "MemoryError"
    out["auto_stream"] = chunked.needs_streaming(1200, 16384)
    r = aqi_by_layer(aqi_path, hooks=["blocks.0.hook_resid_post"], n_bootstrap=10, n_permutations=10, max_points=40,
                     device="cpu")[0]
    out["aqi"] = {k: getattr(r, k) for k in ("davies_bouldin", "dunn", "xie_beni", "calinski_harabasz", "aqi", "p_value")}
    s = activation_overlap_by_layer(sub_path, hooks=["blocks.0.hook_resid_post"], k=5, device="cpu")[0]
    out["mso"] = s.mso
    print(json.dumps(out))
    """
)


def test_metrics_under_memory_limit_smaller_than_cache(tmp_path):
    aqi_path, sub_path = tmp_path / "wide.h5", tmp_path / "long.h5"
    rng = np.random.default_rng(0)
    n, d = 1200, 16384  # 79 MB of float32 activations
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X += (2.0 * y[:, None] * rng.normal(size=d)).astype(np.float32)
    write_cache(aqi_path, {HOOKS[0]: X}, y, ["safe", "unsafe"])
    del X
    n2, d2 = 38400, 512  # 79 MB again, but a small d x d scatter matrix
    y2 = rng.integers(0, 2, n2)
    X2 = (rng.normal(size=(n2, d2)) + y2[:, None] * rng.normal(size=d2)).astype(np.float32)
    write_cache(sub_path, {HOOKS[0]: X2}, y2, ["safe", "unsafe"])
    del X2
    headroom = 64 << 20  # less than either cache
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MALLOC_ARENA_MAX="2",
        MALLOC_MMAP_THRESHOLD_=str(1 << 20),
    )  # big arrays always mmapped: freed memory is returned
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(aqi_path), str(sub_path), str(headroom)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["cache_bytes"] > headroom
    assert got["whole_read"] == "MemoryError"  # the in-memory path cannot run here
    assert got["auto_stream"]

    ref = aqi_by_layer(aqi_path, hooks=[HOOKS[0]], n_bootstrap=10, n_permutations=10, max_points=40, device="cpu", stream=False)[
        0
    ]
    for name, value in got["aqi"].items():
        assert value == pytest.approx(getattr(ref, name), rel=1e-9), name
    ref_sub = activation_overlap_by_layer(sub_path, hooks=[HOOKS[0]], k=5, device="cpu", method="gram", stream=False)[0]
    assert got["mso"] == pytest.approx(ref_sub.mso, rel=1e-9)


PROBE_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from geomprobe.probes import train_probes
    from geomprobe.activations.store import open_cache

    path, headroom = sys.argv[1], int(sys.argv[2])
    with open_cache(path) as c:  # warm up lazy imports and allocator pools before the limit
        c.read(c.hooks[0], rows=slice(0, 4))
    a = np.ones((64, 64))
    np.linalg.eigh(a @ a)
    page = resource.getpagesize()
    used = int(open("/proc/self/statm").read().split()[0]) * page
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom, resource.RLIM_INFINITY))
    out = {}
    with open_cache(path) as c:
        out["cache_bytes"] = c.n_prompts * c.d_model * 4 * len(c.hooks)
        try:
            np.stack([c.read(h) for h in c.hooks])
            out["whole_read"] = "ok"
        except MemoryError:
            out["whole_read"] = "MemoryError"
    probes, result = train_probes(path, "logistic", device="cpu")
    out["auroc"] = [r["auroc"] for r in result.records]
    out["coef"] = probes.fit.coef[:, :4].tolist()
    print(json.dumps(out))
    """
)


def test_probe_training_under_memory_limit_smaller_than_cache(tmp_path):
    """All layers together exceed the memory the process may use; probes train a few layers at a time."""
    from geomprobe.probes import train_probes

    rng = np.random.default_rng(0)
    n, d, n_layers = 3000, 768, 8  # 74 MB of float32 activations
    y = np.tile([0, 1], n // 2)
    pairs = np.repeat(np.arange(n // 2), 2)
    acts = {
        f"blocks.{l}.hook_resid_post": (rng.normal(size=(n, d)) + 0.1 * l * y[:, None] * rng.normal(size=d)).astype(np.float32)
        for l in range(n_layers)
    }
    path = write_cache(tmp_path / "p.h5", acts, y, ["honest", "dishonest"], pair_ids=pairs)
    del acts
    headroom = 64 << 20
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MALLOC_ARENA_MAX="2",
        MALLOC_MMAP_THRESHOLD_=str(1 << 20),
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_CHILD, str(path), str(headroom)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["cache_bytes"] > headroom and got["whole_read"] == "MemoryError"
    ref_probes, ref = train_probes(path, "logistic", device="cpu")
    assert got["auroc"] == pytest.approx([r["auroc"] for r in ref.records], abs=1e-12)
    np.testing.assert_allclose(got["coef"], ref_probes.fit.coef[:, :4], rtol=1e-6, atol=1e-9)
