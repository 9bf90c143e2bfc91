"""Extensions registered once reach every output: a toy cluster index (tests/toy_index.py) and a toy
probe kind (tests/toy_probe.py), each checked against an independent reference and followed through
the API, the CLI, persistence, plots and the audit. docs/architecture.md shows both files verbatim."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from geomprobe.activations.store import open_cache, write_cache
from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [f"blocks.{l}.hook_resid_post" for l in range(3)]


def _fresh_import(name: str):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.fixture()
def toy_index():
    from geomprobe.aqi import unregister_index

    module = _fresh_import("toy_index")
    yield module
    unregister_index("gap_to_spread")
    sys.modules.pop("toy_index", None)


@pytest.fixture()
def toy_probe():
    from geomprobe.probes import unregister_probe_kind

    module = _fresh_import("toy_probe")
    yield module
    unregister_probe_kind("ridge")
    sys.modules.pop("toy_probe", None)


# -- references ----------------------------------------------------------------------------------------
def gap_to_spread_loop(X: np.ndarray, y: np.ndarray) -> float:
    """The toy index with explicit loops over clusters and centroid pairs."""
    X = X.astype(np.float64)
    classes = sorted(set(y.tolist()))
    centroids = [X[y == c].mean(0) for c in classes]
    spread = max(np.mean([np.linalg.norm(row - centroids[i]) for row in X[y == c]]) for i, c in enumerate(classes))
    gap = min(np.linalg.norm(centroids[i] - centroids[j]) for i in range(len(classes)) for j in range(len(classes)) if i != j)
    return gap / spread


def clusters(seed=0, n=60, d=6, k=3):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    return rng.normal(size=(n, d)) + 2.0 * y[:, None], y


def aqi_cache(path: Path):
    rng = np.random.default_rng(0)
    n, d = 60, 8
    labels = np.repeat([0, 1], n // 2)
    acts = {}
    for layer, hook in enumerate(HOOKS):
        X = rng.normal(size=(n, d))
        X[:, 0] += 1.5 * layer * labels
        acts[hook] = X.astype(np.float32)
    write_cache(path, acts, labels, ["harmless", "harmful"], attrs={"model_id": "toy/model", "n_layers": 3})
    return path, acts, labels


def probe_cache(path: Path, seed=0):
    rng = np.random.default_rng(seed)
    n_pairs, d = 60, 10
    y = np.tile([0, 1], n_pairs)
    u = np.random.default_rng(99).normal(size=d)
    acts = {
        hook: (
            np.repeat(rng.normal(size=(n_pairs, d)), 2, axis=0)
            + 0.5 * rng.normal(size=(2 * n_pairs, d))
            + 0.8 * l * np.outer(y, u)
        ).astype(np.float32)
        for l, hook in enumerate(HOOKS)
    }
    write_cache(
        path, acts, y, ["honest", "dishonest"], pair_ids=np.repeat(np.arange(n_pairs), 2), attrs={"model_id": "tiny/model"}
    )
    return path, acts, y


# -- the toy cluster index -----------------------------------------------------------------------------
def test_toy_index_matches_loops_in_memory_and_streamed(toy_index, tmp_path):
    from geomprobe.aqi import cluster_indices, cluster_report, layer_aqi, streamed_cluster_report, streamed_layer_aqi

    X, y = clusters()
    ref = gap_to_spread_loop(X, y)
    assert cluster_report(X, y, device="cpu").extra["gap_to_spread"] == pytest.approx(ref, rel=1e-12)
    assert cluster_indices(X, y, device="cpu")["gap_to_spread"] == pytest.approx(ref, rel=1e-12)
    path = write_cache(tmp_path / "c.h5", {HOOKS[0]: X.astype(np.float32)}, y, ["a", "b", "c"])
    X32 = X.astype(np.float32)
    with open_cache(path) as cache:
        rows = np.arange(len(y))
        streamed = streamed_cluster_report(cache, HOOKS[0], "last", rows, y, device="cpu", block_rows=7)
        assert streamed.extra["gap_to_spread"] == pytest.approx(gap_to_spread_loop(X32, y), rel=1e-10)
        kw = dict(n_bootstrap=30, n_permutations=5, seed=3, device="cpu")
        s = streamed_layer_aqi(cache, HOOKS[0], "last", rows, y, block_rows=7, **kw)
    m = layer_aqi(X32, y, **kw)
    # same record, same resampling on both paths: equal values and intervals
    assert m.extra["gap_to_spread"] == pytest.approx(s.extra["gap_to_spread"], rel=1e-10)
    assert m.ci["gap_to_spread"] == pytest.approx(s.ci["gap_to_spread"], rel=1e-10)


def test_toy_index_interval_is_a_brute_force_bootstrap(toy_index):
    """The interval reproduces a stratified bootstrap of the loop reference drawn with the same generator,
    and registering the index leaves the built-in indices' intervals as they were."""
    from geomprobe.aqi import layer_aqi, unregister_index

    X, y = clusters(seed=1, n=30, d=4, k=2)
    n_boot, level = 40, 0.9
    rec = layer_aqi(X, y, n_bootstrap=n_boot, n_permutations=0, ci_level=level, seed=7, device="cpu")
    rng = np.random.default_rng(7)
    members = [np.flatnonzero(y == c) for c in (0, 1)]
    values = []
    for _ in range(n_boot):
        rows = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        values.append(gap_to_spread_loop(X[rows], y[rows]))
    q_lo, q_hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    estimate = gap_to_spread_loop(X, y)
    assert rec.extra["gap_to_spread"] == pytest.approx(estimate, rel=1e-12)
    assert rec.ci["gap_to_spread"] == pytest.approx((2 * estimate - q_hi, 2 * estimate - q_lo), rel=1e-9)  # basic interval
    unregister_index("gap_to_spread")
    plain = layer_aqi(X, y, n_bootstrap=n_boot, n_permutations=0, ci_level=level, seed=7, device="cpu")
    _fresh_import("toy_index")
    assert plain.extra == {} and "gap_to_spread" not in plain.ci
    assert {k: plain.ci[k] for k in plain.ci} == {k: rec.ci[k] for k in plain.ci}


def test_toy_index_in_cli_table_json_and_plot(toy_index, tmp_path, capsys):
    from geomprobe.plots.geometry import plot_aqi_layers

    path, acts, labels = aqi_cache(tmp_path / "acts.h5")
    out_json, out_png = tmp_path / "aqi.json", tmp_path / "aqi.png"
    assert (
        main(
            [
                "aqi",
                str(path),
                "--json",
                str(out_json),
                "--plot",
                str(out_png),
                "--n-bootstrap",
                "20",
                "--n-permutations",
                "0",
                "--no-pooled",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("hook"))
    assert header.split()[-1] == "gap_to_spread"
    payload = json.loads(out_json.read_text())
    assert payload["indices"][-1] == "gap_to_spread"
    assert payload["extra_indices"] == {"gap_to_spread": "centroid gap / spread (higher = better)"}
    for rec in payload["per_layer"]:
        ref = gap_to_spread_loop(acts[rec["hook"]], labels)
        assert rec["extra"]["gap_to_spread"] == pytest.approx(ref, rel=1e-10)
        low, high = rec["ci"]["gap_to_spread"]
        assert low <= high
        row = next(line for line in out.splitlines() if line.startswith(rec["hook"]))
        assert row.endswith(f"{ref:.4g} [{low:.4g}, {high:.4g}]")  # value and interval in the table
    assert out_png.stat().st_size > 1000
    # The plot has one panel per index: the four, then the registered one with its values and band.
    fig = plot_aqi_layers(payload["per_layer"], index_titles=payload["extra_indices"])
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 1 + 5 and titles[4] == "centroid gap / spread (higher = better)"  # after the four
    panel = fig.axes[4]
    np.testing.assert_allclose(panel.lines[0].get_ydata(), [r["extra"]["gap_to_spread"] for r in payload["per_layer"]])
    assert len(panel.collections) >= 1  # the bootstrap band


def test_cli_plugin_option_registers_the_index(tmp_path, capsys):
    from geomprobe.aqi import INDICES, unregister_index

    sys.modules.pop("toy_index", None)
    assert "gap_to_spread" not in INDICES
    path, _, _ = aqi_cache(tmp_path / "acts.h5")
    try:
        assert (
            main(
                [
                    "--plugin",
                    str(ROOT / "tests" / "toy_index.py"),
                    "aqi",
                    str(path),
                    "--n-bootstrap",
                    "0",
                    "--n-permutations",
                    "0",
                    "--no-pooled",
                ]
            )
            == 0
        )
        assert "gap_to_spread" in capsys.readouterr().out
    finally:
        unregister_index("gap_to_spread")
        sys.modules.pop("toy_index", None)
    assert main(["--plugin", "no_such_plugin_module", "aqi", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geomprobe: error: cannot import plugin 'no_such_plugin_module'") and "\n" not in err


# -- the toy probe kind --------------------------------------------------------------------------------
def test_toy_probe_matches_sklearn_ridge(toy_probe):
    from sklearn.linear_model import Ridge

    from geomprobe.probes import ProbeEstimator, ProbeSweep, fit_layers, make_estimator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 50, 7))
    y = (X[:, :, 0].sum(0) + rng.normal(size=50) > 0).astype(int)
    fit = fit_layers(X, y, "ridge", alpha=2.5, device="cpu")
    assert fit.method == "ridge" and fit.params == {"standardize": False, "alpha": 2.5, "n_rows": 50}
    sweep = ProbeSweep("ridge-regression", params=toy_probe.RidgeParams(alpha=2.5), device="cpu").fit(X, y)
    for l in range(3):
        ref = Ridge(alpha=2.5).fit(X[l], 2.0 * y - 1.0)
        np.testing.assert_allclose(fit.direction[l], ref.coef_, rtol=1e-9, atol=1e-12)
        assert fit.raw_intercept[l] == pytest.approx(ref.intercept_, abs=1e-10)
        np.testing.assert_allclose(sweep.decision_function(X)[l], ref.predict(X[l]), rtol=1e-9, atol=1e-10)
        single = ProbeEstimator("ridge", params={"alpha": 2.5}).fit(X[l], y)
        np.testing.assert_allclose(single.decision_function(X[l]), ref.predict(X[l]), rtol=1e-9, atol=1e-10)
    assert isinstance(make_estimator("ridge", alpha=1.0), ProbeEstimator)
    with pytest.raises(GeomprobeError, match="ridge has no parameter 'beta'; valid: alpha"):
        fit_layers(X, y, "ridge", beta=1.0)
    with pytest.raises(GeomprobeError, match="alpha must be positive"):
        fit_layers(X, y, "ridge", alpha=0.0)


def test_toy_probe_via_cli_saved_and_loaded(toy_probe, tmp_path, capsys):
    from sklearn.linear_model import Ridge

    from geomprobe.probes import load_probe

    cache, acts, y = probe_cache(tmp_path / "h.h5")
    out = tmp_path / "ridge"
    assert (
        main(
            [
                "probe",
                "train",
                str(cache),
                "--out",
                str(out),
                "--method",
                "ridge",
                "--param",
                "alpha=2",
                "--no-control",
                "--json",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    side = json.loads((out / "probe.json").read_text())
    assert side["method"] == "ridge" and side["params"]["alpha"] == 2.0
    probes = load_probe(out)
    assert probes.method == "ridge" and probes.kind_params == toy_probe.RidgeParams(alpha=2.0)
    # the saved directions are scikit-learn's Ridge on the training rows
    test_rows = set(probes.meta["split"]["test_rows"])
    train = np.array([i for i in range(len(y)) if i not in test_rows])
    for hook in HOOKS:
        ref = Ridge(alpha=2.0).fit(acts[hook][train].astype(np.float64), 2.0 * y[train] - 1.0)
        np.testing.assert_allclose(probes.direction(hook), ref.coef_, rtol=1e-6, atol=1e-9)
    assert json.loads((tmp_path / "t.json").read_text())["params"]["alpha"] == 2.0
    assert main(["probe", "eval", str(out), str(cache), "--no-control", "--all-rows", "--json", str(tmp_path / "e.json")]) == 0
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["method"] == "ridge" and payload["per_layer"][2]["auroc"] > 0.9
    capsys.readouterr()
    # --param is typed and validated against the kind's dataclass: one line naming the key and the valid keys
    for bad, message in (
        (["--param", "beta=1"], "ridge has no parameter 'beta'; valid: alpha"),
        (["--param", "alpha=abc"], "--param alpha='abc': ridge's alpha takes float"),
        (["--param", "alpha"], "--param 'alpha' is not KEY=VALUE; valid keys for ridge: alpha"),
        (["--param", "alpha=-1"], "ridge alpha must be positive"),
    ):
        assert (
            main(["probe", "train", str(cache), "--out", str(tmp_path / "bad"), "--method", "ridge", *bad, "--no-control"]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and not (tmp_path / "bad" / "probe.json").exists()


def test_deprecated_flags_map_onto_params(tmp_path, capsys):
    cache, _, _ = probe_cache(tmp_path / "h.h5")
    assert (
        main(
            [
                "probe",
                "train",
                str(cache),
                "--out",
                str(tmp_path / "new"),
                "--param",
                "C=0.5",
                "--param",
                "fit_intercept=true",
                "--no-control",
            ]
        )
        == 0
    )
    assert (
        main(["probe", "train", str(cache), "--out", str(tmp_path / "old"), "--C", "0.5", "--fit-intercept", "--no-control"]) == 0
    )
    err = capsys.readouterr().err
    assert "--C is deprecated; use --param C=0.5" in err and "--param fit_intercept=true" in err
    new, old = (json.loads((tmp_path / n / "probe.json").read_text()) for n in ("new", "old"))
    assert new["params"] == old["params"] and new["params"]["C"] == 0.5 and new["params"]["fit_intercept"] is True
    assert (
        main(
            [
                "probe",
                "train",
                str(cache),
                "--out",
                str(tmp_path / "lda"),
                "--method",
                "lda",
                "--shrinkage",
                "0.3",
                "--no-control",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "lda" / "probe.json").read_text())["params"]["shrinkage"] == 0.3
    assert (
        main(["probe", "train", str(cache), "--out", str(tmp_path / "x"), "--method", "mean-diff", "--C", "0.5", "--no-control"])
        == 2
    )
    assert "mean-diff has no parameter 'C'; valid: none" in capsys.readouterr().err


def test_old_probe_folder_loads_under_the_new_name(tmp_path):
    from geomprobe.probes import load_probe, save_probe, train_probes

    cache, _, _ = probe_cache(tmp_path / "h.h5")
    with pytest.warns(FutureWarning, match="'pca-diff-uncentered'"):
        probes, _ = train_probes(cache, "pca-diff", device="cpu")
    assert probes.method == "pca-diff-uncentered"
    folder = save_probe(probes, tmp_path / "p")
    side = json.loads((folder / "probe.json").read_text())
    side["method"] = "pca-diff"  # as saved before the rename
    (folder / "probe.json").write_text(json.dumps(side))
    loaded = load_probe(folder)
    assert loaded.method == "pca-diff-uncentered"
    np.testing.assert_array_equal(loaded.direction(HOOKS[1]), probes.direction(HOOKS[1]))


# -- docs/architecture.md shows these files as its worked examples ---------------------------------------
def _section(title: str) -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize("title, name", [("Adding a cluster index", "toy_index.py"), ("Adding a probe kind", "toy_probe.py")])
def test_architecture_doc_shows_the_toy_files(title, name):
    blocks = re.findall(r"```python\n(.*?)```", _section(title), flags=re.S)
    assert (ROOT / "tests" / name).read_text() in blocks, f"paste tests/{name} into the '{title}' section"


def test_architecture_steering_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", _section("Adding a steering method"), flags=re.S)
    exec(compile(code, "docs/architecture.md", "exec"), {})


# -- the audit -----------------------------------------------------------------------------------------
def test_audit_reports_toy_index_and_probe_kind(toy_index, toy_probe, tiny_llama, tmp_path):
    import torch
    from test_audit import SMALL

    from geomprobe.audit import run_audit, validate_metrics
    from geomprobe.steering import SteeringVector, bake_ablation

    sizes = SMALL.replace(probes={"methods": ("logistic", "ridge")})
    vec = SteeringVector({HOOKS[1]: torch.ones(tiny_llama.d_model)}, "mean-diff", "last", "tiny")
    twin = bake_ablation(tiny_llama, vec, tmp_path / "twin", hook=HOOKS[1])
    res = run_audit(tiny_llama, against=twin, out_dir=tmp_path / "audit", sizes=sizes, device="cpu")
    m = json.loads(res.metrics_path.read_text())
    assert validate_metrics(m) == []
    a = m["aqi"]
    assert a["extra_indices"] == {"gap_to_spread": "centroid gap / spread (higher = better)"}
    with open_cache(res.caches["harmful_harmless"]) as cache:
        for rec in a["per_layer"]:
            ref = gap_to_spread_loop(cache.read(rec["hook"], "last"), cache.labels)
            assert rec["extra"]["gap_to_spread"] == pytest.approx(ref, rel=1e-9)
            low, high = rec["extra_ci"]["gap_to_spread"]
            assert low <= high
    p = m["probes"]
    assert p["methods"] == ["logistic", "ridge"] and p["params"]["ridge"]["alpha"] == 1.0
    ridge = [r for r in p["per_layer"] if r["method"] == "ridge"]
    assert len(ridge) == len(m["settings"]["layers"]) and all(0 <= r["auroc"] <= 1 for r in ridge)
    assert m["settings"]["probes"]["methods"] == ["logistic", "ridge"]
    report = res.markdown_path.read_text()
    assert "centroid gap / spread (higher = better) (interval)" in report
    assert "AUROC ridge" in report and "ridge: standardize=False, alpha=1" in report
    assert m["comparison"]["aqi"]["per_layer"]  # the --against comparison ran on the same registries
    # the registered index is paired too: a's value from this audit, b's recomputed on b's own cache
    pairs = m["comparison"]["aqi"]["extra"]["gap_to_spread"]["per_layer"]
    with open_cache(res.out_dir / "caches" / "against" / res.caches["harmful_harmless"].name) as cache_b:
        for rec, pair in zip(a["per_layer"], pairs):
            assert pair["layer"] == rec["layer"] and pair["a"] == rec["extra"]["gap_to_spread"]
            ref_b = gap_to_spread_loop(cache_b.read(rec["hook"], "last"), cache_b.labels)
            assert pair["b"] == pytest.approx(ref_b, rel=1e-9)
            assert pair["delta"] == pytest.approx(pair["b"] - pair["a"])
    # the report is rebuilt from metrics.json alone, registered indices included
    from geomprobe.audit.sections.geometry import GeometrySection

    block = GeometrySection().report(m)
    assert block.tables[0].header[-2] == "centroid gap / spread (higher = better) (interval)"


def test_safetensors_header_starting_with_0x80_is_not_called_a_pickle(tmp_path):
    """A header length whose first byte is 0x80 (here 128 + 256 k bytes) is a valid safetensors file; before,
    its first byte alone made the reader refuse it as a pickle (a pca-diff-uncentered probe hit this)."""
    from safetensors.numpy import save_file

    from geomprobe.core.artifacts import read_safetensors

    for pad in range(0, 400):
        path = tmp_path / "t.safetensors"
        save_file({"w": np.arange(3.0)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    np.testing.assert_array_equal(read_safetensors(path, "fix")["w"], np.arange(3.0))
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 40)  # a pickle's opening bytes are still refused unread
    with pytest.raises(GeomprobeError, match="pickle"):
        read_safetensors(path, "fix")
