"""``geomprobe probe`` command line: train, eval, transfer, tokens, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_probe_eval import HOOKS, build_token_cache, make_cache, make_control

from geomprobe.cli import main


def test_train_eval_cli(tmp_path, capsys):
    cache = make_cache(tmp_path / "train.h5")
    control = make_control(tmp_path / "control.h5")
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "train",
                str(cache),
                "--out",
                str(out),
                "--json",
                str(tmp_path / "train.json"),
                "--plot",
                str(tmp_path / "train.png"),
                "--device",
                "cpu",
                "--control",
                str(control),
            ]
        )
        == 0
    )
    assert (out / "probe.safetensors").exists() and (out / "probe.json").exists()
    assert "layer chosen on the validation split of the training rows" in capsys.readouterr().err
    other = make_cache(tmp_path / "other.h5", seed=4)
    code = main(
        [
            "probe",
            "eval",
            str(out),
            str(other),
            "--control",
            str(control),
            "--json",
            str(tmp_path / "e.json"),
            "--plot",
            str(tmp_path / "e.png"),
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "e.json").read_text())
    recs = payload["per_layer"]
    assert [r["hook"] for r in recs] == HOOKS and [r["layer"] for r in recs] == [0, 1, 2]
    assert recs[2]["auroc"] > 0.8 and recs[2]["threshold_source"] == "control"
    assert payload["positive_label"] == "dishonest"
    assert (tmp_path / "e.png").stat().st_size > 1000
    # the same cache as training: held-out rows only
    assert main(["probe", "eval", str(out), str(cache), "--no-control", "--json", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["eval_rows"] == "held-out"
    for method in ("mean-diff", "lda", "pca-diff-uncentered"):
        assert (
            main(
                [
                    "probe",
                    "train",
                    str(cache),
                    "--out",
                    str(tmp_path / method),
                    "--method",
                    method,
                    "--hooks",
                    "resid_post:2",
                    "--no-control",
                ]
            )
            == 0
        )


def test_transfer_and_tokens_cli(tmp_path, capsys):
    a, b = make_cache(tmp_path / "a.h5"), make_cache(tmp_path / "b.h5", seed=1)
    assert main(["probe", "transfer", str(a), str(b), "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")]) == 0
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["best_hook"] == HOOKS[2] and len(payload["records"]) == 12
    assert main(["probe", "train", str(a), "--out", str(tmp_path / "p"), "--method", "mean-diff", "--no-control"]) == 0
    tok, _ = build_token_cache(tmp_path / "tok.h5")
    assert (
        main(
            [
                "probe",
                "tokens",
                str(tmp_path / "p"),
                str(tok),
                "--html",
                str(tmp_path / "t.html"),
                "--json",
                str(tmp_path / "tok.json"),
                "--rows",
                "0",
                "1",
            ]
        )
        == 0
    )
    html = (tmp_path / "t.html").read_text()
    assert "[10]" in html  # token ids shown without a tokenizer
    rows = json.loads((tmp_path / "tok.json").read_text())["rows"]
    assert len(rows) == 2 and rows[1]["response_mean"] > rows[0]["response_mean"]


def test_cli_errors(tmp_path, capsys):
    cache = make_cache(tmp_path / "c.h5")
    out = tmp_path / "probe"
    assert main(["probe", "train", str(cache), "--out", str(out), "--no-control"]) == 0
    capsys.readouterr()
    # bundled control needs the probe's model; a cache made from arrays has none
    arrays = make_cache(tmp_path / "arrays.h5", model_id="arrays")
    assert main(["probe", "train", str(arrays), "--out", str(tmp_path / "pa"), "--no-control"]) == 0
    capsys.readouterr()
    assert main(["probe", "eval", str(tmp_path / "pa"), str(arrays), "--json", str(tmp_path / "e.json")]) == 2
    assert "--control" in capsys.readouterr().err
    assert (
        main(
            ["probe", "eval", str(out), str(cache), "--control", str(tmp_path / "missing.h5"), "--json", str(tmp_path / "e.json")]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    wide = make_cache(tmp_path / "wide.h5", d=32)
    assert main(["probe", "eval", str(out), str(wide), "--no-control", "--json", str(tmp_path / "e.json")]) == 2
    assert "d_model" in capsys.readouterr().err
    from geomprobe.activations.store import write_cache

    acts = {h: np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32) for h in HOOKS}
    write_cache(tmp_path / "one.h5", acts, np.zeros(20, dtype=int), ["honest", "dishonest"])
    assert main(["probe", "train", str(tmp_path / "one.h5"), "--out", str(tmp_path / "p1"), "--no-control"]) == 2
    assert "one class" in capsys.readouterr().err
    assert main(["probe", "train", str(cache), "--out", str(out), "--no-control"]) == 2  # exists without --overwrite
    # subprocess: exit code 2 and no traceback
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geomprobe",
            "probe",
            "eval",
            str(out),
            str(wide),
            "--no-control",
            "--json",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "geomprobe: error:" in proc.stderr
    (out / "probe.safetensors").write_bytes(b"\x80\x04K\x01.")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "geomprobe",
            "probe",
            "eval",
            str(out),
            str(cache),
            "--no-control",
            "--json",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "pickle" in proc.stderr and "Traceback" not in proc.stderr


def test_bundled_control_and_score_with_tiny_model(tmp_path, tiny_llama, tiny_llama_dir, capsys):
    """End to end on a real (tiny) model: cache honesty, train, eval with the bundled control, score."""
    from geomprobe.activations.collect import cache_activations

    cache = tmp_path / "honesty.h5"
    cache_activations(tiny_llama, "honesty", cache, poolings=("last", "mean"), limit=60)
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "train",
                str(cache),
                "--out",
                str(out),
                "--pooling",
                "mean",
                "--test-size",
                "0.3",
                "--device",
                "cpu",
                "--json",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    # no --control: the threshold comes from the bundled control prompts run through the cache's model
    trained = json.loads((tmp_path / "t.json").read_text())
    assert trained["control"] == "bundled:control"
    assert all(r["threshold_source"] == "control" for r in trained["per_layer"])
    assert main(["probe", "eval", str(out), str(cache), "--all-rows", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["control"] == "bundled:control"
    assert all(r["threshold_source"] == "control" for r in payload["per_layer"])
    assert (
        main(
            [
                "probe",
                "score",
                str(out),
                "--model",
                str(tiny_llama_dir),
                "--device",
                "cpu",
                "--text",
                "The sky is green.",
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "s.json").read_text())["results"][0]["scores"]
    assert set(scores) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    # Without --model, score runs the model the probe's cache came from; same numbers.
    assert (
        main(["probe", "score", str(out), "--device", "cpu", "--text", "The sky is green.", "--json", str(tmp_path / "s2.json")])
        == 0
    )
    again = json.loads((tmp_path / "s2.json").read_text())["results"][0]["scores"]
    assert again == scores


def test_bundled_control_runs_the_caches_model_source_offline(tmp_path, tiny_llama, tiny_llama_dir, monkeypatch, capsys):
    """README stage 4 offline: the control set loads the model the cache was made from by its recorded
    source, never by its model id (for the default model a hub name), and the source survives in the probe."""
    import h5py

    import geomprobe.models as models
    from geomprobe.activations.collect import cache_activations
    from geomprobe.probes import load_probe

    cache = tmp_path / "honesty.h5"
    cache_activations(tiny_llama, "honesty", cache, poolings=("mean",), limit=60)
    with h5py.File(cache, "r+") as f:  # an id no machine can resolve, as the default model's hub name offline
        f.attrs["model_id"] = "nobody/not-on-the-hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded_names: list[str] = []
    real_load = models.load_model

    def recording_load(name, *args, **kwargs):
        loaded_names.append(str(name))
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", recording_load)
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "train",
                str(cache),
                "--out",
                str(out),
                "--pooling",
                "mean",
                "--test-size",
                "0.3",
                "--device",
                "cpu",
                "--json",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    trained = json.loads((tmp_path / "t.json").read_text())
    assert trained["control"] == "bundled:control" and trained["model_id"] == "nobody/not-on-the-hub"
    assert all(r["threshold_source"] == "control" for r in trained["per_layer"])
    source = str(Path(tiny_llama_dir).resolve())
    assert loaded_names == [source]
    # the source round-trips through the probe's metadata, and eval's control set uses it too
    assert load_probe(out).meta["model_source"] == source
    assert main(["probe", "eval", str(out), str(cache), "--all-rows", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    assert loaded_names == [source, source]
    assert all(r["threshold_source"] == "control" for r in json.loads((tmp_path / "e.json").read_text())["per_layer"])
