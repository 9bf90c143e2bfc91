"""Subspace bases, MSO, principal angles, baselines and activation-space overlap.

References: scikit-learn PCA (centred bases and energies), scipy.linalg.subspace_angles
(principal angles), brute-force double loops (MSO), numpy QR draws (random baseline), and
planted structure with known answers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.decomposition import PCA

from geomprobe.activations.store import write_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.subspace import (
    activation_overlap_by_layer,
    empirical_random_baseline,
    energy_in_subspace,
    mode_subspace_overlap,
    overlap_of_arrays,
    principal_cosines,
    random_baseline,
    subspace_basis,
    top_left_singular,
)


def orth(rng, d, k):
    return np.linalg.qr(rng.normal(size=(d, k)))[0]


def planted(rng, n, Q, scales, noise=1e-3, mean=0.0):
    coeffs = rng.normal(size=(n, Q.shape[1])) * np.asarray(scales)
    return coeffs @ Q.T + noise * rng.normal(size=(n, Q.shape[0])) + mean


def projector(Q):
    Q = np.asarray(Q)
    return Q @ Q.T


# -- bases ------------------------------------------------------------------------------------
def test_centred_basis_matches_sklearn_pca():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 20)) * np.linspace(5, 0.2, 20) + 7.0
    pca = PCA().fit(X)
    cum = np.cumsum(pca.explained_variance_ratio_)
    for energy in (0.5, 0.8, 0.95):
        basis = subspace_basis(X, energy=energy)
        k_ref = int(np.searchsorted(cum, energy) + 1)
        assert basis.k == k_ref
        assert basis.energy == pytest.approx(cum[k_ref - 1], rel=1e-10)
        assert np.allclose(projector(basis.Q), projector(pca.components_[:k_ref].T), atol=1e-8)
        assert np.allclose(basis.Q.T @ basis.Q, np.eye(basis.k), atol=1e-10)
    assert np.allclose(subspace_basis(X, k=3).mean, X.mean(0))


def test_uncentred_basis_matches_numpy_svd():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 12)) + 3.0
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    basis = subspace_basis(X, k=4, center=False)
    assert np.allclose(basis.singular_values, s[:4], rtol=1e-10)
    assert np.allclose(projector(basis.Q), projector(vt[:4].T), atol=1e-8)
    # The shared mean dominates the uncentred top direction.
    mean_dir = X.mean(0) / np.linalg.norm(X.mean(0))
    assert abs(basis.Q[:, 0] @ mean_dir) > 0.99


def test_energy_one_gives_the_rank_and_k_is_capped_at_rank():
    rng = np.random.default_rng(2)
    X = planted(rng, 40, orth(rng, 30, 5), [3, 2, 2, 1, 1], noise=0.0)
    assert subspace_basis(X, energy=1.0).k == 5
    assert subspace_basis(X, k=10).k == 5


@pytest.mark.parametrize("method", ["exact", "gram", "randomized"])
@pytest.mark.parametrize("shape", [(150, 700), (700, 150)])
def test_svd_methods_agree(method, shape):
    rng = np.random.default_rng(3)
    m, n = shape
    M = orth(rng, m, 8) @ np.diag(np.arange(8, 0, -1.0)) @ orth(rng, n, 8).T + 1e-3 * rng.normal(size=shape)
    M = torch.tensor(M)
    u, s, _ = np.linalg.svd(M.numpy(), full_matrices=False)
    ref = u[:, :8]
    got = top_left_singular(M, k=8, method=method)
    assert got.method.startswith(method)
    assert np.allclose(got.s.numpy(), s[:8], rtol=1e-6)
    assert np.allclose(projector(got.Q.numpy()), projector(ref), atol=1e-6)
    e = top_left_singular(M, energy=0.9, method=method)
    k_ref = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.9) + 1)
    assert e.Q.shape[1] == k_ref
    assert e.energy == pytest.approx(np.sum(s[:k_ref] ** 2) / np.sum(s**2), rel=1e-6)


# -- overlap and angles -----------------------------------------------------------------------
def test_mso_and_cosines_match_scipy_and_brute_force():
    rng = np.random.default_rng(4)
    Qa, Qb = orth(rng, 30, 4), orth(rng, 30, 7)
    cos = principal_cosines(Qa, Qb)
    ref = np.sort(np.cos(scipy.linalg.subspace_angles(Qa, Qb)))[::-1]
    assert cos.shape == (4,)
    assert np.allclose(cos, ref, atol=1e-10)
    brute = sum((Qa[:, i] @ Qb[:, j]) ** 2 for i in range(4) for j in range(7)) / 4
    assert mode_subspace_overlap(Qa, Qb) == pytest.approx(brute, rel=1e-12)
    assert mode_subspace_overlap(Qa, Qb) == pytest.approx(np.mean(cos**2), rel=1e-12)
    assert mode_subspace_overlap(Qb, Qa) == pytest.approx(brute, rel=1e-12)


def test_planted_principal_angles():
    rng = np.random.default_rng(5)
    E = orth(rng, 40, 8)
    theta = np.array([0.0, math.pi / 6, math.pi / 4, math.pi / 3])
    Qb = E[:, :4] * np.cos(theta) + E[:, 4:] * np.sin(theta)
    assert np.allclose(principal_cosines(E[:, :4], Qb), np.cos(theta), atol=1e-10)
    assert mode_subspace_overlap(E[:, :4], Qb) == pytest.approx(np.mean(np.cos(theta) ** 2))
    assert mode_subspace_overlap(E[:, :4], E[:, 4:]) == pytest.approx(0.0, abs=1e-12)
    assert mode_subspace_overlap(E[:, :2], E[:, :6]) == pytest.approx(1.0)


def test_empirical_baseline_matches_analytic_and_numpy_draws():
    d, ka, kb, n = 50, 3, 9, 400
    emp = empirical_random_baseline(d, ka, kb, n_draws=n, seed=7)
    analytic = random_baseline(d, ka, kb)
    assert analytic == pytest.approx(9 / 50)
    assert abs(emp.mean - analytic) < 4 * emp.std / math.sqrt(n)
    # Same seed, same draws; other seed, other draws; symmetric in (ka, kb).
    assert np.array_equal(emp.draws, empirical_random_baseline(d, ka, kb, n_draws=n, seed=7).draws)
    assert not np.array_equal(emp.draws, empirical_random_baseline(d, ka, kb, n_draws=n, seed=8).draws)
    assert np.array_equal(emp.draws, empirical_random_baseline(d, kb, ka, n_draws=n, seed=7).draws)
    # Independent reference: both subspaces drawn at random with numpy.
    rng = np.random.default_rng(0)
    ref = np.array([mode_subspace_overlap(orth(rng, d, ka), orth(rng, d, kb)) for _ in range(n)])
    se = math.sqrt(emp.std**2 / n + ref.std(ddof=1) ** 2 / n)
    assert abs(emp.mean - ref.mean()) < 4 * se
    assert emp.std == pytest.approx(ref.std(ddof=1), rel=0.25)


# -- activation space: planted structure ------------------------------------------------------
def test_shared_planted_subspace_gives_overlap_near_one():
    rng = np.random.default_rng(10)
    S = orth(rng, 64, 5)
    Xa = planted(rng, 200, S, [5, 4, 3, 2, 1.5], mean=2.0)
    Xb = planted(rng, 150, S, [4.5, 4, 3.5, 2.5, 1.5], mean=-1.0)
    fixed = overlap_of_arrays(Xa, Xb, k=5)
    assert fixed.mso > 0.999
    assert np.all(fixed.cosines > 0.999)
    by_energy = overlap_of_arrays(Xa, Xb, energy=0.99)
    assert by_energy.k_a == by_energy.k_b == 5
    assert by_energy.mso > 0.999
    assert fixed.baseline == pytest.approx(5 / 64)


def test_independent_planted_subspaces_give_the_baseline():
    rng = np.random.default_rng(11)
    d, k, trials = 128, 6, 30
    values = []
    for _ in range(trials):
        Xa = planted(rng, 60, orth(rng, d, k), np.linspace(3, 1, k))
        Xb = planted(rng, 60, orth(rng, d, k), np.linspace(3, 1, k))
        result = overlap_of_arrays(Xa, Xb, k=k, n_draws=200)
        values.append(result.mso)
    assert result.baseline == pytest.approx(k / d)
    assert abs(result.baseline_empirical - k / d) < 4 * result.baseline_empirical_std / math.sqrt(200)
    assert abs(np.mean(values) - k / d) < 4 * result.baseline_empirical_std / math.sqrt(trials)


def test_rotation_leaves_results_unchanged():
    rng = np.random.default_rng(12)
    d = 32
    Xa = planted(rng, 90, orth(rng, d, 4), [3, 2, 1, 1], noise=0.05, mean=1.0)
    Xb = planted(rng, 70, orth(rng, d, 6), [3, 3, 2, 1, 1, 1], noise=0.05, mean=-0.5)
    R = orth(rng, d, d)
    for center in (True, False):
        before = overlap_of_arrays(Xa, Xb, energy=0.85, center=center)
        after = overlap_of_arrays(Xa @ R, Xb @ R, energy=0.85, center=center)
        assert (before.k_a, before.k_b) == (after.k_a, after.k_b)
        for key in ("mso", "energy_a", "energy_b", "mean_diff_in_a", "mean_diff_in_b", "mean_diff_norm"):
            assert getattr(after, key) == pytest.approx(getattr(before, key), rel=1e-8, abs=1e-10)
        assert np.allclose(after.cosines, before.cosines, atol=1e-8)


def test_shared_mean_inflates_uncentred_overlap():
    rng = np.random.default_rng(13)
    d = 64
    mean = 20.0 * rng.normal(size=d)
    Xa = planted(rng, 100, orth(rng, d, 4), [2, 2, 1, 1], mean=mean)
    Xb = planted(rng, 100, orth(rng, d, 4), [2, 2, 1, 1], mean=mean)
    centred = overlap_of_arrays(Xa, Xb, k=4)
    raw = overlap_of_arrays(Xa, Xb, k=4, center=False)
    assert raw.cosines[0] > 0.99  # both uncentred bases start with the shared mean
    assert raw.mso > centred.mso + 0.15
    assert centred.mso < 5 * centred.baseline


def test_mean_difference_capture():
    rng = np.random.default_rng(14)
    d = 48
    E = orth(rng, d, 8)
    Xa = planted(rng, 120, E[:, :3], [3, 2, 1], noise=0.0)
    Xb = planted(rng, 120, E[:, 3:6], [3, 2, 1], noise=0.0)
    Xa = Xa - Xa.mean(0) + 4 * E[:, 0]  # class means differ along a direction inside span(A)
    Xb = Xb - Xb.mean(0)
    r = overlap_of_arrays(Xa, Xb, k=3)
    assert r.mean_diff_norm == pytest.approx(4.0)
    assert r.mean_diff_in_a == pytest.approx(1.0, abs=1e-8)
    assert r.mean_diff_in_b == pytest.approx(0.0, abs=1e-8)
    assert r.mean_diff_baseline_a == pytest.approx(3 / d)
    assert energy_in_subspace(E[:, :2], E[:, 0] + E[:, 7]) == pytest.approx(0.5)


# -- from a cache file ------------------------------------------------------------------------
@pytest.fixture()
def three_class_cache(tmp_path):
    rng = np.random.default_rng(20)
    d, n = 24, 90
    labels = np.array([0] * 30 + [1] * 30 + [2] * 20 + [-1] * 10)
    acts = {f"blocks.{layer}.hook_resid_post": rng.normal(size=(n, d)).astype(np.float32) * (1 + layer) for layer in range(3)}
    path = write_cache(tmp_path / "c.h5", acts, labels, ["harmless", "harmful", "control"], attrs={"model_id": "toy"})
    return path, acts, labels


def test_activation_overlap_by_layer_reads_the_right_rows(three_class_cache):
    path, acts, labels = three_class_cache
    results = activation_overlap_by_layer(path, label_pair=("harmless", "harmful"), energy=0.7, device="cpu")
    assert [r.hook for r in results] == list(acts)
    for r in results:
        X = acts[r.hook]
        ref = overlap_of_arrays(X[labels == 0], X[labels == 1], energy=0.7, label_a="harmless", label_b="harmful")
        assert (r.n_a, r.n_b, r.k_a, r.k_b) == (30, 30, ref.k_a, ref.k_b)
        assert r.mso == pytest.approx(ref.mso, rel=1e-10)
        assert r.layer == int(r.hook.split(".")[1])
        assert r.model_id == "toy"
        record = r.to_dict()
        assert record == r.to_record()
        for key in ("hook", "layer", "pooling", "dtype", "centered", "k_a", "k_b", "energy_target", "cosines"):
            assert key in record
        json.dumps(record)
    rest = activation_overlap_by_layer(path, hooks=["resid_post:1-2"], positive_label="harmful", k=3, device="cpu")
    assert [r.hook for r in rest] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert (rest[0].label_a, rest[0].label_b, rest[0].n_a, rest[0].n_b) == ("not-harmful", "harmful", 50, 30)
    assert rest[0].k_requested == 3 and rest[0].energy_target is None


def test_label_arguments_in_the_stage_order(three_class_cache):
    """(cache, hooks, pooling, positive_label, label_pair), as in aqi_by_layer; labels= is the old name."""
    path, acts, labels = three_class_cache
    positional = activation_overlap_by_layer(path, "resid_post:0", "last", None, ("control", "harmful"), k=2, device="cpu")
    keyword = activation_overlap_by_layer(path, hooks="resid_post:0", label_pair=("control", "harmful"), k=2, device="cpu")
    with pytest.warns(DeprecationWarning, match="label_pair"):
        old = activation_overlap_by_layer(path, hooks="resid_post:0", labels=("control", "harmful"), k=2, device="cpu")
    assert positional[0].to_dict() == keyword[0].to_dict() == old[0].to_dict()
    assert (positional[0].label_a, positional[0].n_a, positional[0].n_b) == ("control", 20, 30)
    rest = activation_overlap_by_layer(path, "resid_post:0", "last", "harmful", k=2, device="cpu")[0]
    assert (rest.label_b, rest.n_a, rest.n_b) == ("harmful", 50, 30)
    with pytest.raises(GeomprobeError, match="old name"):
        activation_overlap_by_layer(path, label_pair=("control", "harmful"), labels=("control", "harmful"), device="cpu")


def test_two_class_cache_needs_no_labels(tmp_path):
    rng = np.random.default_rng(21)
    path = write_cache(
        tmp_path / "two.h5", {"blocks.0.hook_resid_post": rng.normal(size=(20, 8))}, [0] * 10 + [1] * 10, ["safe", "unsafe"]
    )
    (r,) = activation_overlap_by_layer(path, k=2, center=False, device="cpu")
    assert (r.label_a, r.label_b, r.centered) == ("safe", "unsafe", False)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("energy", [0.0, -0.2, 1.5, float("nan"), "x"])
def test_energy_outside_unit_interval_is_an_error(energy):
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(GeomprobeError, match="energy fraction"):
        subspace_basis(X, energy=energy)


def test_bad_inputs_raise_clear_errors(three_class_cache):
    path, _, _ = three_class_cache
    rng = np.random.default_rng(0)
    with pytest.raises(GeomprobeError, match="fewer than k=12"):
        subspace_basis(rng.normal(size=(10, 20)), k=12)
    with pytest.raises(GeomprobeError, match="fewer than k=10"):
        subspace_basis(rng.normal(size=(10, 20)), k=10)  # 10 centred samples span 9 directions
    with pytest.raises(GeomprobeError, match="fewer than k=25"):
        activation_overlap_by_layer(path, label_pair=("control", "harmful"), k=25, device="cpu")
    with pytest.raises(GeomprobeError, match="3 labels are in use"):
        activation_overlap_by_layer(path, device="cpu")
    with pytest.raises(GeomprobeError, match="not in this cache"):
        activation_overlap_by_layer(path, positive_label="evil", device="cpu")
    with pytest.raises(GeomprobeError, match="positive integer"):
        subspace_basis(rng.normal(size=(10, 4)), k=0)
    with pytest.raises(GeomprobeError, match="NaN"):
        subspace_basis(np.full((5, 3), np.nan))
    with pytest.raises(GeomprobeError, match="different dimensions"):
        mode_subspace_overlap(orth(rng, 5, 2), orth(rng, 6, 2))
    with pytest.raises(GeomprobeError, match="no variance"):
        subspace_basis(np.ones((5, 3)))


def test_activation_plot_accepts_records(three_class_cache):
    from geomprobe.plots.subspace import plot_activation_overlap

    path, _, _ = three_class_cache
    results = activation_overlap_by_layer(path, label_pair=("harmless", "harmful"), k=3, n_draws=20, device="cpu")
    fig = plot_activation_overlap([r.to_record() for r in results], title="toy")
    left = fig.axes[0]
    assert left.get_xlabel() == "layer" and "pooling=last" in left.get_title() and "toy" in left.get_title()
    assert fig.axes[1].get_images()[0].get_array().shape == (3, 3)
    with pytest.raises(GeomprobeError):
        plot_activation_overlap([])
