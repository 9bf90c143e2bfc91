"""geomprobe aqi: table, JSON records, plot, and exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from geomprobe.activations.store import write_cache
from geomprobe.aqi import cluster_indices
from geomprobe.cli import main


@pytest.fixture()
def cache(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 80, 12
    labels = np.repeat([0, 1], n // 2)
    acts = {}
    for layer in range(3):
        X = rng.normal(size=(n, d))
        X[:, 0] += 1.5 * layer * labels
        acts[f"blocks.{layer}.hook_resid_post"] = X.astype(np.float32)
    path = write_cache(
        tmp_path / "acts.h5", acts, labels, ["harmless", "harmful"], attrs={"model_id": "toy/model", "n_layers": 3}
    )
    return path, acts, labels


def test_cli_writes_table_json_and_plot(cache, tmp_path, capsys):
    path, acts, labels = cache
    out_json, out_png = tmp_path / "aqi.json", tmp_path / "aqi.png"
    code = main(
        ["aqi", str(path), "--json", str(out_json), "--plot", str(out_png), "--n-bootstrap", "30", "--n-permutations", "30"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "blocks.2.hook_resid_post" in out and "layer-pooled AQI" in out and "toy/model" in out
    payload = json.loads(out_json.read_text())
    assert payload["model_id"] == "toy/model" and payload["pooling"] == "last"
    assert payload["metric_dtype"] == "float64" and payload["store_dtype"] == "float32"
    records = payload["per_layer"]
    assert [r["layer"] for r in records] == [0, 1, 2]
    for r in records:
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
        ):
            assert key in r
        ref = cluster_indices(acts[r["hook"]], labels)
        for key, value in ref.items():
            assert r[key] == pytest.approx(value, rel=1e-9)
    assert records[2]["p_value"] == pytest.approx(1 / 31)
    # the largest AQI is printed as a maximum over layers, never as a bare headline
    top = max(records, key=lambda r: r["aqi"])
    assert f"max over 3 layers: AQI {top['aqi']:.4f} at {top['hook']} (chosen on the rows it is computed on: optimistic" in out
    pooled = payload["pooled"]
    assert len(pooled["weights"]) == 3 and abs(sum(pooled["weights"]) - 1) < 1e-9 and "heldout_aqi" in pooled
    assert out_png.stat().st_size > 10_000


def test_cli_hooks_and_labels_options(cache, tmp_path, capsys):
    path, _, _ = cache
    out_json = tmp_path / "one.json"
    code = main(
        [
            "aqi",
            str(path),
            "--hooks",
            "resid_post:1",
            "--labels",
            "harmless",
            "harmful",
            "--n-bootstrap",
            "0",
            "--n-permutations",
            "0",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    payload = json.loads(out_json.read_text())
    assert [r["hook"] for r in payload["per_layer"]] == ["blocks.1.hook_resid_post"]
    assert payload["pooled"] is None and "two or more hooks" in payload["pooled_note"]
    assert payload["per_layer"][0]["p_value"] is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--positive-label", "nope"], "not in this cache"),
        (["--hooks", "resid_post:7"], "out of range"),
        (["--pooling", "mean"], "no 'mean' pooling"),
        (["--reduce", "umap"], "unknown reduction"),
    ],
)
def test_cli_bad_input_exit_2(cache, capsys, extra, message):
    path, _, _ = cache
    assert main(["aqi", str(path), "--n-bootstrap", "0", "--n-permutations", "0", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomprobe: error:") and message in err


def test_cli_unwritable_output_and_one_class_exit_2(tmp_path, capsys):
    X = np.random.default_rng(1).normal(size=(10, 4))
    labels = np.repeat([0, 1], 5)
    path = write_cache(tmp_path / "ok.h5", {"blocks.0.hook_resid_post": X}, labels, ["a", "b"])
    assert main(["aqi", str(path), "--json", str(tmp_path / "missing" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    one = write_cache(tmp_path / "one.h5", {"blocks.0.hook_resid_post": X}, np.zeros(10, dtype=int), ["a", "b"])
    assert main(["aqi", str(one), "--n-bootstrap", "0", "--n-permutations", "0"]) == 2
    assert "need two classes" in capsys.readouterr().err


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", "aqi", str(tmp_path / "missing.h5")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "geomprobe: error:" in proc.stderr
