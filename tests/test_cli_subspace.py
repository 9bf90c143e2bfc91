"""``geomprobe subspace acts|weights|project`` through main() and once through a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_subspace_weights import DOWN_NAME, Q_NAME, plant_llama

from geomprobe.activations.store import write_cache
from geomprobe.cli import main
from geomprobe.models import load_checkpoint


@pytest.fixture()
def cache_path(tmp_path):
    rng = np.random.default_rng(0)
    d = 32
    S = np.linalg.qr(rng.normal(size=(d, 3)))[0]
    acts = {}
    for layer in range(3):
        harmless = rng.normal(size=(25, 3)) @ S.T + 0.01 * rng.normal(size=(25, d))
        harmful = rng.normal(size=(20, 3)) @ S.T + 0.01 * rng.normal(size=(20, d)) + 1.0
        acts[f"blocks.{layer}.hook_resid_post"] = np.vstack([harmless, harmful, rng.normal(size=(5, d))]).astype(np.float32)
    labels = [0] * 25 + [1] * 20 + [-1] * 5
    return write_cache(tmp_path / "acts.h5", acts, labels, ["harmless", "harmful"], attrs={"model_id": "toy-model"})


def test_acts_writes_json_and_plot(cache_path, tmp_path, capsys):
    out_json, out_png = tmp_path / "acts.json", tmp_path / "acts.png"
    code = main(
        ["subspace", "acts", str(cache_path), "--k", "3", "--device", "cpu", "--json", str(out_json), "--plot", str(out_png)]
    )
    assert code == 0
    shown = capsys.readouterr().out
    assert "harmless (n=25) vs harmful (n=20)" in shown and "blocks.2.hook_resid_post" in shown
    payload = json.loads(out_json.read_text())
    records = payload["records"]
    assert [r["layer"] for r in records] == [0, 1, 2]
    assert all(r["mso"] > 0.99 and r["centered"] and r["pooling"] == "last" and r["dtype"] == "float64" for r in records)
    assert out_png.stat().st_size > 1000


def test_acts_options(cache_path, tmp_path, capsys):
    out_json = tmp_path / "p.json"
    code = main(
        [
            "subspace",
            "acts",
            str(cache_path),
            "--positive-label",
            "harmful",
            "--no-center",
            "--hooks",
            "resid_post:1",
            "--energy",
            "0.5",
            "--n-draws",
            "10",
            "--device",
            "cpu",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    (record,) = json.loads(out_json.read_text())["records"]
    assert (record["hook"], record["label_a"], record["label_b"], record["centered"]) == (
        "blocks.1.hook_resid_post",
        "harmless",
        "harmful",
        False,
    )
    assert record["energy_target"] == 0.5 and record["n_draws"] == 10


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--energy", "1.5"], "energy fraction must be in (0, 1]"),
        (["--energy", "0"], "energy fraction must be in (0, 1]"),
        (["--k", "22"], "fewer than k=22"),
        (["--labels", "harmless", "evil"], "'evil' is not in this cache"),
    ],
)
def test_acts_bad_input_exits_2(cache_path, capsys, extra, message):
    assert main(["subspace", "acts", str(cache_path), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomprobe: error:") and message in err


def test_acts_k_and_energy_are_exclusive(cache_path):
    with pytest.raises(SystemExit) as exc:
        main(["subspace", "acts", str(cache_path), "--k", "2", "--energy", "0.5"])
    assert exc.value.code == 2


def test_subprocess_bad_energy_exits_2_without_traceback(cache_path):
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", "subspace", "acts", str(cache_path), "--energy", "2", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "energy fraction" in proc.stderr


@pytest.fixture(scope="module")
def planted_dirs(tiny_llama_dir, tmp_path_factory):
    ckpt = load_checkpoint(tiny_llama_dir)
    aligned, finetuned, _ = plant_llama(ckpt.hf_model)
    root = tmp_path_factory.mktemp("planted")
    for name, model in (("aligned", aligned), ("finetuned", finetuned)):
        model.save_pretrained(root / name)
        ckpt.tokenizer.save_pretrained(root / name)
    return tiny_llama_dir, root / "aligned", root / "finetuned"


def test_weights_cli(planted_dirs, tmp_path, capsys):
    base, aligned, finetuned = planted_dirs
    out_json, out_png = tmp_path / "w.json", tmp_path / "w.png"
    code = main(
        [
            "subspace",
            "weights",
            "--base",
            str(base),
            "--aligned",
            str(aligned),
            "--finetuned",
            str(finetuned),
            "--k",
            "4",
            "--device",
            "cpu",
            "--group",
            "module",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ]
    )
    assert code == 0
    assert "down_proj" in capsys.readouterr().out
    payload = json.loads(out_json.read_text())
    by_name = {r["name"]: r for r in payload["records"]}
    assert by_name[Q_NAME]["mso"] == pytest.approx(0.5, abs=1e-5)
    assert by_name[DOWN_NAME]["status"] == "ok"
    assert by_name["model.layers.0.self_attn.k_proj.weight"]["mso"] is None  # NaN -> null
    assert [g["key"] for g in payload["by_layer"]] == [0, 1]
    assert out_png.stat().st_size > 1000


def test_weights_cli_mismatch_exits_2(planted_dirs, tiny_gpt2_dir, capsys):
    base, _, _ = planted_dirs
    assert main(["subspace", "weights", "--base", str(base), "--aligned", str(tiny_gpt2_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomprobe: error:") and "architecture" in err
    assert main(["subspace", "weights", "--base", str(base), "--aligned", str(base), "--energy", "1.01"]) == 2
    assert "energy fraction" in capsys.readouterr().err


def test_project_cli(planted_dirs, tmp_path, capsys):
    base, aligned, finetuned = planted_dirs
    out = tmp_path / "projected"
    args = [
        "subspace",
        "project",
        "--base",
        str(base),
        "--aligned",
        str(aligned),
        "--finetuned",
        str(finetuned),
        "--mode",
        "orthogonal",
        "--k",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main([*args, "--json", str(tmp_path / "proj.json")]) == 0
    assert "mode=orthogonal" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "geomprobe-projection.json").is_file()
    report = json.loads((tmp_path / "proj.json").read_text())
    assert report["mode"] == "orthogonal" and len(report["matrices"]) == 14
    assert main(args) == 2  # the folder is not empty now
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
