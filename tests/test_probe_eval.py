"""Probe metrics, cache-level training/evaluation, persistence and token scores."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from geomprobe.activations.store import CacheWriter, write_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.probes import (
    accuracy,
    auroc,
    balanced_accuracy,
    calibration_error,
    choose_positive,
    control_threshold,
    evaluate_probes,
    load_probe,
    probe_directions,
    recall_at_threshold,
    response_scores,
    save_probe,
    token_scores,
    train_probes,
    transfer_matrix,
)

HOOKS = [f"blocks.{l}.hook_resid_post" for l in range(3)]


def synth(N=160, d=16, seed=0, shift=2.0, model_id="tiny/model", labels=("honest", "dishonest")):
    rng = np.random.default_rng(seed)
    n_pairs = N // 2
    y = np.tile([0, 1], n_pairs)
    u = np.random.default_rng(99).normal(size=d)
    u /= np.linalg.norm(u)
    acts = {}
    for l, hook in enumerate(HOOKS):
        fact = np.repeat(rng.normal(size=(n_pairs, d)), 2, axis=0)
        acts[hook] = (fact + 0.5 * rng.normal(size=(N, d)) + shift * l / 2 * np.outer(y, u)).astype(np.float32)
    return acts, y, np.repeat(np.arange(n_pairs), 2), list(labels), model_id


def make_cache(path, **kw):
    acts, y, pairs, names, model_id = synth(**kw)
    write_cache(path, acts, y, names, pair_ids=pairs, attrs={"model_id": model_id})
    return path


def make_control(path, d=16, seed=5, model_id="tiny/model"):
    rng = np.random.default_rng(seed)
    acts = {h: rng.normal(size=(100, d)).astype(np.float32) for h in HOOKS}
    write_cache(path, acts, np.zeros(100, dtype=int), ["control"], attrs={"model_id": model_id})
    return path


# -- metrics --------------------------------------------------------------------------------


def test_metrics_match_sklearn_and_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=(3, 300)) + y, 1)  # rounding makes ties
    for l in range(3):
        assert auroc(scores, y)[l] == pytest.approx(roc_auc_score(y, scores[l]), abs=1e-12)
        assert accuracy(scores, y)[l] == pytest.approx(accuracy_score(y, scores[l] > 0))
        assert balanced_accuracy(scores, y)[l] == pytest.approx(balanced_accuracy_score(y, scores[l] > 0))
    control = rng.normal(size=1000)
    thr = control_threshold(control, 0.01)
    assert np.mean(control > thr) == pytest.approx(0.01, abs=0.002)
    s = scores[0]
    brute = sum(1 for v, t in zip(s, y) if t == 1 and v > thr) / sum(y)
    assert recall_at_threshold(s, y, thr) == pytest.approx(brute)
    # expected calibration error against a plain loop
    prob = 1 / (1 + np.exp(-s))
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        member = [(p, t) for p, t in zip(prob, y) if (lo <= p < hi) or (b == 9 and p == 1.0)]
        if member:
            total += len(member) / len(s) * abs(np.mean([p for p, _ in member]) - np.mean([t for _, t in member]))
    assert calibration_error(s, y) == pytest.approx(total, abs=1e-12)
    assert np.isnan(auroc(s, np.ones(300)))


def test_choose_positive():
    assert choose_positive(["honest", "dishonest"]) == 1
    assert choose_positive(["deceptive", "honest"]) == 0
    assert choose_positive(["harmless", "harmful"]) == 1
    assert choose_positive(["a", "b"]) == 1
    assert choose_positive(["a", "b"], "a") == 0
    with pytest.raises(GeomprobeError, match="not in"):
        choose_positive(["a", "b"], "c")


# -- cache level ----------------------------------------------------------------------------


def test_train_save_load_evaluate(tmp_path):
    cache = make_cache(tmp_path / "train.h5")
    probes, result = train_probes(cache, "logistic", device="cpu")
    assert probes.positive_label == "dishonest" and probes.hooks == HOOKS
    aucs = [r["auroc"] for r in result.records]
    assert aucs[2] > 0.95 and aucs[0] < 0.8  # layer 0 carries no signal
    for r in result.records:
        assert {"hook", "layer", "pooling", "dtype", "auroc", "recall_at_fpr", "calibration_error"} <= set(r)
    split = probes.meta["split"]
    assert split["n_test"] == len(result.y)
    test_rows = np.array(split["test_rows"])
    assert np.array_equal(np.unique(test_rows // 2, return_counts=True)[1], np.full(len(test_rows) // 2, 2))

    folder = save_probe(probes, tmp_path / "probe")
    side = json.loads((folder / "probe.json").read_text())
    assert side["format"] == "geomprobe-probe" and side["d_model"] == 16 and side["model_id"] == "tiny/model"
    assert len(side["data_sha256"]) == 64 and side["metrics"][2]["hook"] == HOOKS[2]
    loaded = load_probe(folder, expect_model_id="tiny/model", expect_d_model=16)
    X = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    for h in HOOKS:
        np.testing.assert_allclose(loaded.decision_function(h, X), probes.decision_function(h, X), rtol=1e-12)
    dirs = probe_directions(folder)
    np.testing.assert_allclose(dirs[HOOKS[2]], probes.fit.direction[2])

    # Evaluating on the training cache scores only the held-out rows, with the same numbers.
    res = evaluate_probes(loaded, cache)
    assert res.info["eval_rows"] == "held-out"
    assert [r["auroc"] for r in res.records] == pytest.approx(aucs)
    full = evaluate_probes(loaded, cache, all_rows=True)
    assert full.records[0]["n_eval"] == 160

    # A control set sets the threshold: recall = share of positives above its 99th percentile.
    control = make_control(tmp_path / "control.h5")
    res = evaluate_probes(loaded, make_cache(tmp_path / "other.h5", seed=7), control=control, fpr=0.01)
    from geomprobe.activations.store import read_activations

    ctrl_scores = loaded.decision_function(HOOKS[2], read_activations(control, HOOKS[2]))
    thr = np.quantile(ctrl_scores, 0.99)
    assert res.records[2]["threshold"] == pytest.approx(thr)
    assert res.records[2]["threshold_source"] == "control"
    pos = res.scores[HOOKS[2]][res.y == 1]
    assert res.records[2]["recall_at_fpr"] == pytest.approx(np.mean(pos > thr))


def test_positive_against_the_rest_with_three_labels(tmp_path):
    """Probes take the positive class by the shared rule (core.labels) against every other label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from geomprobe.probes import LayerMetrics

    acts, y, pairs, _, _ = synth()
    labels = y.copy()
    labels[::4] = 2  # a third label ("control") among the negatives' places
    labels[1] = -1  # unlabelled: dropped
    names = ["honest", "dishonest", "control"]
    path = tmp_path / "three.h5"
    write_cache(path, acts, labels, names, pair_ids=pairs, attrs={"model_id": "m"})
    probes, result = train_probes(path, "logistic", device="cpu")
    assert probes.positive_label == "dishonest" and probes.meta["negative_labels"] == ["control", "honest"]
    # Independent reference on the same held-out split: sklearn on positive-vs-rest labels.
    test_rows = np.array(probes.meta["split"]["test_rows"])
    kept = np.flatnonzero(labels >= 0)
    train_rows = np.setdiff1d(kept, test_rows)
    y01 = (labels == 1).astype(int)
    np.testing.assert_array_equal(result.y, y01[test_rows])
    X = acts[HOOKS[2]].astype(np.float64)
    scaler = StandardScaler().fit(X[train_rows])
    ref = LogisticRegression(C=0.1, fit_intercept=False, tol=1e-10, max_iter=10000).fit(
        scaler.transform(X[train_rows]), y01[train_rows]
    )
    expected = roc_auc_score(y01[test_rows], ref.decision_function(scaler.transform(X[test_rows])))
    assert result.records[2]["auroc"] == pytest.approx(expected, abs=1e-3)
    # Typed results: LayerMetrics with to_dict(), the dict records the same numbers.
    assert all(isinstance(m, LayerMetrics) for m in result.layers)
    assert [m.to_dict() for m in result.layers] == result.records
    assert "eval_rows" not in result.records[0] and result.to_dict()["per_layer"] == result.records
    evaluated = evaluate_probes(probes, path)
    assert evaluated.layers[2].eval_rows == "held-out" and evaluated.records[2]["eval_rows"] == "held-out"
    assert evaluated.records[2]["auroc"] == pytest.approx(result.records[2]["auroc"])


@pytest.mark.parametrize("method", ["mean-diff", "lda", "pca-diff-uncentered"])
def test_other_methods_on_cache(tmp_path, method):
    cache = make_cache(tmp_path / "c.h5")
    probes, result = train_probes(cache, method, device="cpu")
    assert result.records[2]["auroc"] > 0.9
    folder = save_probe(probes, tmp_path / "p")
    assert load_probe(folder).method == method


def test_load_refuses_pickles_and_mismatches(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    probes, _ = train_probes(cache, "mean-diff", hooks=["resid_post:1-2"], device="cpu")
    assert probes.hooks == HOOKS[1:]
    folder = save_probe(probes, tmp_path / "p")
    with pytest.raises(GeomprobeError, match="already holds"):
        save_probe(probes, folder)
    with pytest.raises(GeomprobeError, match="model"):
        load_probe(folder, expect_model_id="other/model")
    with pytest.raises(GeomprobeError, match="width"):
        load_probe(folder, expect_d_model=32)
    # another model's cache: refused unless the transfer is explicit
    other = make_cache(tmp_path / "other.h5", model_id="other/ckpt", seed=3)
    with pytest.raises(GeomprobeError, match="allow-model-mismatch"):
        evaluate_probes(probes, other)
    res = evaluate_probes(probes, other, allow_model_mismatch=True)
    assert res.info["model_mismatch"] is True
    # another width
    wide = make_cache(tmp_path / "wide.h5", d=32)
    with pytest.raises(GeomprobeError, match="d_model=32"):
        evaluate_probes(probes, wide)
    # missing hook
    write_cache(
        tmp_path / "nohook.h5",
        {"blocks.7.hook_resid_post": np.zeros((4, 16), np.float32)},
        [0, 1, 0, 1],
        ["honest", "dishonest"],
        attrs={"model_id": "tiny/model"},
    )
    with pytest.raises(GeomprobeError, match="lacks hook"):
        evaluate_probes(probes, tmp_path / "nohook.h5")
    # missing control file
    with pytest.raises(GeomprobeError, match="control cache"):
        evaluate_probes(probes, cache, control=tmp_path / "nope.h5")
    # a pickle under the safetensors name is never unpickled
    (folder / "probe.safetensors").write_bytes(pickle.dumps({"coef": np.ones(16)}))
    with pytest.raises(GeomprobeError, match="pickle"):
        load_probe(folder)
    (folder / "probe.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(GeomprobeError, match="safetensors"):
        load_probe(folder)


def test_one_class_and_nan_caches(tmp_path):
    acts, y, pairs, names, _ = synth()
    write_cache(tmp_path / "one.h5", acts, np.zeros_like(y), names, attrs={"model_id": "m"})
    with pytest.raises(GeomprobeError, match="one class"):
        train_probes(tmp_path / "one.h5")
    acts[HOOKS[1]][5, 3] = np.nan
    # the cache writer itself refuses NaN; build the file, then poison it to test the reader path
    good = dict(acts)
    good[HOOKS[1]] = np.nan_to_num(good[HOOKS[1]])
    write_cache(tmp_path / "nan.h5", good, y, names, attrs={"model_id": "m"})
    import h5py

    with h5py.File(tmp_path / "nan.h5", "r+") as f:
        f[f"activations/{HOOKS[1]}/last"][5, 3] = np.nan
    with pytest.raises(GeomprobeError, match="NaN"):
        train_probes(tmp_path / "nan.h5")


def test_transfer_matrix(tmp_path):
    a = make_cache(tmp_path / "a.h5", seed=0)
    b = make_cache(tmp_path / "b.h5", seed=1, model_id="tiny/model-ckpt2")
    c = make_cache(tmp_path / "c.h5", seed=2, shift=-2.0)  # reversed direction: transfer fails
    res = transfer_matrix([a, b, c], "logistic", device="cpu")
    assert res.auroc.shape == (3, 3, 3)
    assert res.auroc[0, 1, 2] > 0.8 and res.auroc[1, 0, 2] > 0.8 and res.auroc[0, 0, 2] > 0.9
    assert res.auroc[0, 2, 2] < 0.3
    recs = res.records()
    assert len(recs) == 27 and {"train", "eval", "hook", "layer", "auroc"} <= set(recs[0])


def build_token_cache(path, d=16, n=6, seed=0):
    """An all-pooled cache whose response tokens of positive rows carry a known direction."""
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(99).normal(size=d)
    u /= np.linalg.norm(u)
    labels = [i % 2 for i in range(n)]
    token_ids, starts, blocks = [], [], {h: [] for h in HOOKS}
    for i in range(n):
        length = 5 + i
        token_ids.append(list(range(10 + i, 10 + i + length)))
        starts.append(2)
        for h in HOOKS:
            x = rng.normal(scale=0.3, size=(length, d))
            x[2:] += 3.0 * labels[i] * u
            blocks[h].append(x.astype(np.float32))
    writer = CacheWriter(
        path, hooks=HOOKS, poolings=["all"], d_model=d, label_names=["honest", "dishonest"], attrs={"model_id": "tiny/model"}
    )
    with writer:
        writer.append(
            activations={h: {"all": np.concatenate(blocks[h])} for h in HOOKS},
            labels=labels,
            token_ids=token_ids,
            response_start=starts,
            response_end=[5 + i - 1 for i in range(n)],  # the last token stands for a chat template's closing token
        )
    return path, blocks


def test_token_scores_and_html(tmp_path):
    from geomprobe.plots.probes import token_scores_html

    probes, _ = train_probes(make_cache(tmp_path / "t.h5"), "mean-diff", device="cpu")
    path, blocks = build_token_cache(tmp_path / "tok.h5")
    scored = token_scores(probes, path, HOOKS[2])
    assert len(scored) == 6
    for t in scored:
        np.testing.assert_allclose(t.scores, probes.decision_function(HOOKS[2], blocks[HOOKS[2]][t.row]))
        assert len(t.token_ids) == 5 + t.row and t.token_ids[0] == 10 + t.row
        # The response is [start, end): the trailing template token is scored but not averaged, so the
        # mean equals the probe applied to the mean-pooled response (a linear probe commutes with the mean).
        assert t.response_mean == pytest.approx(t.scores[2:-1].mean())
        pooled = blocks[HOOKS[2]][t.row][2:-1].mean(axis=0, keepdims=True)
        assert t.response_mean == pytest.approx(float(probes.decision_function(HOOKS[2], pooled)[0]), rel=1e-5)
    means = response_scores(probes, path, HOOKS[2])
    assert all(means[1::2] > means[0::2].max())
    out = token_scores_html(
        [[str(v) for v in t.token_ids] for t in scored],
        [t.scores for t in scored],
        tmp_path / "tok.html",
        response_start=[t.response_start for t in scored],
        labels=[t.label for t in scored],
    )
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("class='tok") == sum(len(t.scores) for t in scored)
    assert "<script" not in text
    # a pooled-only cache has no tokens
    with pytest.raises(GeomprobeError, match="all"):
        token_scores(probes, tmp_path / "t.h5", HOOKS[2])


def test_html_escapes_tokens(tmp_path):
    from geomprobe.plots.probes import token_scores_html

    text = token_scores_html(["<b>", "&x"], np.array([1.0, -1.0]), tmp_path / "x.html").read_text()
    assert "&lt;b&gt;" in text and "&amp;x" in text and "<b>" not in text.split("<body>")[1]


def test_plots(tmp_path):
    from geomprobe.plots._style import save_figure
    from geomprobe.plots.probes import plot_probe_layers, plot_score_distributions, plot_transfer_matrix

    probes, result = train_probes(make_cache(tmp_path / "c.h5"), device="cpu")
    fig = plot_probe_layers(result.records, model_id="tiny/model")
    assert "tiny/model" in fig._suptitle.get_text()
    save_figure(fig, tmp_path / "layers.png")
    save_figure(plot_transfer_matrix(["a", "b"], np.array([[0.9, 0.7], [0.6, 1.0]]), hook=HOOKS[2]), tmp_path / "t.png")
    save_figure(plot_score_distributions(result.scores[HOOKS[2]], result.y, hook=HOOKS[2], threshold=0.0), tmp_path / "h.png")
    assert (tmp_path / "layers.png").stat().st_size > 1000


def test_layer_blocks_give_the_same_probes_as_one_sweep(tmp_path):
    """Caches larger than memory are trained a few layers at a time; the result must not change."""
    from geomprobe.activations.store import write_cache
    from geomprobe.probes import evaluate_probes, train_probes
    from geomprobe.probes.persistence import data_sha256
    from geomprobe.probes.pipeline import layer_blocks

    rng = np.random.default_rng(3)
    n, d = 80, 12
    y = np.tile([0, 1], n // 2)
    pairs = np.repeat(np.arange(n // 2), 2)
    acts = {
        f"blocks.{l}.hook_resid_post": (rng.normal(size=(n, d)) + 0.8 * l * y[:, None] * np.eye(d)[0]).astype(np.float32)
        for l in range(5)
    }
    path = write_cache(tmp_path / "c.h5", acts, y, ["honest", "dishonest"], pair_ids=pairs)
    hooks = list(acts)
    assert layer_blocks(hooks, n, d, budget=2 * 3 * n * d * 4) == [hooks[0:2], hooks[2:4], hooks[4:5]]
    whole, res_whole = train_probes(path, "logistic", memory_budget=None)
    blocked, res_blocked = train_probes(path, "logistic", memory_budget=3 * n * d * 4)  # one layer per block
    np.testing.assert_allclose(blocked.fit.coef, whole.fit.coef, rtol=1e-12, atol=1e-12)
    assert [r["auroc"] for r in res_blocked.records] == [r["auroc"] for r in res_whole.records]
    assert blocked.meta["data_sha256"] == data_sha256([acts[h] for h in hooks], y)
    # Evaluation hashes layer by layer and still recognises the training cache.
    assert evaluate_probes(blocked, path).info["eval_rows"] == "held-out"
