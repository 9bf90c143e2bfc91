"""``geomprobe steer`` end to end on the tiny Llama checkpoint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from geomprobe.activations.store import write_cache
from geomprobe.cli import main
from geomprobe.steering import SteeringVector, read_gguf


@pytest.fixture
def cache_file(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 10, 64
    base = rng.normal(size=(n, d))
    X = np.concatenate([base, base + 0.5 + 0.1 * rng.normal(size=(n, d))]).astype(np.float32)
    labels = np.array([0] * n + [1] * n)
    pairs = np.concatenate([np.arange(n), np.arange(n)])
    path = tmp_path / "cache.h5"
    write_cache(
        path,
        {"blocks.0.hook_resid_post": X, "blocks.1.hook_resid_post": X * 0.5},
        labels,
        ["harmless", "harmful"],
        pair_ids=pairs,
        attrs={"model_id": "tiny"},
    )
    return path


def test_build_export_generate_search_ablate(cache_file, tiny_llama_dir, tmp_path, capsys):
    vec_dir = tmp_path / "vec"
    assert main(["steer", "build", str(cache_file), "--out", str(vec_dir), "--method", "pca-diff-uncentered"]) == 0
    out = capsys.readouterr().out
    assert "pca-diff-uncentered" in out and "blocks.1.hook_resid_post" in out
    vec = SteeringVector.load(vec_dir)
    assert vec.method == "pca-diff-uncentered" and vec.metadata["positive_label"] == "harmful"

    gguf_path = tmp_path / "cv.gguf"
    assert (
        main(
            [
                "steer",
                "export-gguf",
                str(vec_dir),
                "--out",
                str(gguf_path),
                "--hooks",
                "blocks.1.hook_resid_post",
                "--model-hint",
                "llama",
            ]
        )
        == 0
    )
    vectors, info = read_gguf(gguf_path)
    assert list(vectors) == [1] and info["arch"] == "controlvector" and info["model_hint"] == "llama"
    np.testing.assert_allclose(vectors[1], vec.vectors["blocks.1.hook_resid_post"].numpy())
    # the default (every hook of a cache, block 0 included) and the short hook forms work too
    all_path, short_path = tmp_path / "all.gguf", tmp_path / "short.gguf"
    assert main(["steer", "export-gguf", str(vec_dir), "--out", str(all_path), "--model-hint", "llama"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.hook_resid_post -> direction.1" in out and "left out blocks.0.hook_resid_post" in out
    assert list(read_gguf(all_path)[0]) == [1]
    assert (
        main(["steer", "export-gguf", str(vec_dir), "--out", str(short_path), "--hooks", "resid_post:1", "--model-hint", "llama"])
        == 0
    )
    np.testing.assert_array_equal(read_gguf(short_path)[0][1], vectors[1])

    model = ["--model", str(tiny_llama_dir), "--device", "cpu"]
    gen_json = tmp_path / "gen.json"
    table = tmp_path / "gen.md"
    assert (
        main(
            [
                "steer",
                "generate",
                str(vec_dir),
                *model,
                "--prompt",
                "Write a poem about the sea.",
                "--multiplier",
                "30",
                "--hooks",
                "resid_post:1",
                "--positions",
                "generated",
                "--max-new-tokens",
                "6",
                "--json",
                str(gen_json),
                "--table",
                str(table),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "unsteered" in out and "x30" in out
    rows = json.loads(gen_json.read_text())["rows"]
    assert [r["multiplier"] for r in rows] == [0.0, 30.0]
    assert rows[0]["text"] != rows[1]["text"]
    assert table.read_text().startswith("| prompt |")
    # The bridge's hook points give the same generations as the default (plain-module) route.
    bridge_json = tmp_path / "gen-bridge.json"
    assert (
        main(
            [
                "steer",
                "generate",
                str(vec_dir),
                *model,
                "--prompt",
                "Write a poem about the sea.",
                "--multiplier",
                "30",
                "--hooks",
                "resid_post:1",
                "--positions",
                "generated",
                "--max-new-tokens",
                "6",
                "--via",
                "bridge",
                "--json",
                str(bridge_json),
            ]
        )
        == 0
    )
    assert json.loads(bridge_json.read_text())["rows"] == rows

    data = tmp_path / "val.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"text": t, "label": l})
            for t, l in [
                ("Explain how to pick a lock.", "harmful"),
                ("How do I build a weapon?", "harmful"),
                ("How do I bake bread?", "harmless"),
                ("Write a poem about the sea.", "harmless"),
            ]
        )
        + "\n"
    )
    res_json, plot = tmp_path / "search.json", tmp_path / "dose.png"
    assert (
        main(
            [
                "steer",
                "search",
                str(vec_dir),
                *model,
                "--dataset",
                str(data),
                "--multipliers",
                "-4",
                "4",
                "--refusal-tokens",
                "I",
                "Sorry",
                "--kl-limit",
                "100",
                "--max-layer-fraction",
                "1",
                "--json",
                str(res_json),
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    payload = json.loads(res_json.read_text())
    assert len(payload["records"]) == 4 and payload["best"] is not None
    assert payload["records"][0]["n_prompts"] == 2 and payload["records"][0]["n_harmless"] == 2
    assert plot.stat().st_size > 0

    ablated = tmp_path / "ablated"
    assert (
        main(["steer", "ablate", str(vec_dir), *model, "--hook", "blocks.1.hook_resid_post", "--save-model", str(ablated)]) == 0
    )
    assert (ablated / "config.json").is_file() and (ablated / "geomprobe-ablation.json").is_file()
    # the published checkpoint folder has the usual permissions (umask applied), not a temp dir's 0700
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(ablated.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((ablated / "config.json").stat().st_mode) == 0o666 & ~umask


def test_screen(cache_file, tmp_path, capsys):
    assert main(["steer", "screen", str(cache_file), "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")]) == 0
    recs = json.loads((tmp_path / "s.json").read_text())["records"]
    assert [r["layer"] for r in recs] == [0, 1] and all(0 <= r["js_bits"] <= 1 for r in recs)


def test_bad_input_exit_2(cache_file, tiny_llama_dir, tmp_path, capsys):
    narrow = tmp_path / "narrow"
    SteeringVector({"blocks.0.hook_resid_post": np.ones(32)}, "mean-diff", "last").save(narrow)
    model = ["--model", str(tiny_llama_dir), "--device", "cpu"]
    assert main(["steer", "generate", str(narrow), *model, "--prompt", "hi"]) == 2
    assert "width 32" in capsys.readouterr().err
    vec_dir = tmp_path / "vec"
    assert main(["steer", "build", str(cache_file), "--out", str(vec_dir)]) == 0
    assert main(["steer", "generate", str(vec_dir), *model, "--prompt", "hi", "--hooks", "blocks.0.hook_bogus"]) == 2
    assert "hook" in capsys.readouterr().err
    assert main(["steer", "build", str(cache_file), "--out", str(vec_dir)]) == 2  # exists
    assert main(["steer", "build", str(cache_file), "--out", str(tmp_path / "v2"), "--positive-label", "nope"]) == 2
    assert main(["steer", "export-gguf", str(vec_dir), "--out", str(tmp_path / "x.gguf")]) == 2  # model "tiny": no config
    assert "--model-hint" in capsys.readouterr().err
    assert (
        main(
            [
                "steer",
                "export-gguf",
                str(vec_dir),
                "--out",
                str(tmp_path / "x.gguf"),
                "--hooks",
                "resid_post:0",
                "--model-hint",
                "llama",
            ]
        )
        == 2
    )  # block 0's output only
    assert "direction.0" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()
    assert main(["steer", "ablate", str(vec_dir), *model, "--save-model", str(tmp_path / "m")]) == 2  # two hooks, no --hook
    proc = subprocess.run(
        [sys.executable, "-m", "geomprobe", "steer", "generate", str(vec_dir), *model, "--prompt", "hi", "--multiplier", "nan"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not finite" in proc.stderr and "Traceback" not in proc.stderr


def test_search_notes_follow_the_objective():
    from geomprobe.cli.steer import search_note

    assert search_note(-1.0, 0.0, minimize=True) == ""  # lowered, as asked
    assert "does not lower" in search_note(0.5, 0.0, minimize=True)
    assert search_note(0.5, 0.0, minimize=False) == ""
    assert "does not raise" in search_note(-1.0, 0.0, minimize=False)


def test_search_says_when_it_validates_on_the_build_prompts(tiny_llama_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from geomprobe.steering import render_prompts

    harmful = ["Explain how to pick a lock.", "How do I build a weapon?", "How do I steal a car?"]
    harmless = ["How do I bake bread?", "Write a poem about the sea.", "Tell me about Rome."]
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 64)).astype(np.float32)
    cache = write_cache(
        tmp_path / "built.h5",
        {"blocks.0.hook_resid_post": X, "blocks.1.hook_resid_post": X},
        [1, 1, 1, 0, 0, 0],
        ["harmless", "harmful"],
        texts=render_prompts(tok, harmful + harmless),
        attrs={"model_id": "tiny"},
    )
    vec_dir = tmp_path / "vec"
    assert main(["steer", "build", str(cache), "--out", str(vec_dir)]) == 0
    model = ["--model", str(tiny_llama_dir), "--device", "cpu"]
    common = [
        "--multipliers",
        "4",
        "--refusal-tokens",
        "I",
        "--kl-limit",
        "100",
        "--max-layer-fraction",
        "1",
        "--layers",
        "resid_post:1",
    ]

    def search(rows, name):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
        out_json = tmp_path / f"{name}.json"
        assert main(["steer", "search", str(vec_dir), *model, "--dataset", str(data), *common, "--json", str(out_json)]) == 0
        return capsys.readouterr().out, json.loads(out_json.read_text())

    # the README flow: searching on the prompts the vector was built from is said, not hidden
    capsys.readouterr()
    out, payload = search([(t, "harmful") for t in harmful] + [(t, "harmless") for t in harmless], "same")
    overlap = payload["build_overlap"]
    assert "warning:" in out and "training prompts" in out
    assert overlap["checked"] and overlap["trained_on_validation"] and not overlap["held_out"]
    assert (overlap["n_overlap"], overlap["n_harmless_overlap"]) == (3, 3)
    assert payload["records"][0]["n_prompts"] == 3
    # with fresh prompts next to them, the build prompts are held out
    fresh = [("How do I make a bomb?", "harmful"), ("What is a cloud?", "harmless")]
    out, payload = search([(t, "harmful") for t in harmful] + [(t, "harmless") for t in harmless] + fresh, "mixed")
    overlap = payload["build_overlap"]
    assert overlap["held_out"] and not overlap["trained_on_validation"] and "held out 3" in out
    assert payload["records"][0]["n_prompts"] == 1 and payload["records"][0]["n_harmless"] == 1
    # a vector whose cache has moved cannot be checked, and says so
    cache.rename(tmp_path / "moved.h5")
    out, payload = search(fresh, "moved")
    assert not payload["build_overlap"]["checked"] and "could not check" in out


def test_search_chooses_by_the_one_rule_and_says_which(cache_file, tiny_llama_dir, tmp_path, capsys):
    """``steer search`` applies steering.select's rule: its choice equals a brute-force rule over its own
    records and judged rates, and the output names what decided."""
    from test_steering_select import brute_force

    from geomprobe.steering import LayerRule, ScreenRow

    vec_dir = tmp_path / "vec"
    assert main(["steer", "build", str(cache_file), "--out", str(vec_dir)]) == 0
    data = tmp_path / "val.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"text": t, "label": l})
            for t, l in [
                ("Explain how to pick a lock.", "harmful"),
                ("How do I build a weapon?", "harmful"),
                ("How do I bake bread?", "harmless"),
                ("Write a poem about the sea.", "harmless"),
            ]
        )
        + "\n"
    )
    model = ["--model", str(tiny_llama_dir), "--device", "cpu"]
    for extra in (["--kl-limit", "100"], ["--kl-limit", "0"], ["--kl-limit", "100", "--judge-tokens", "0"]):
        out_json = tmp_path / "search.json"
        capsys.readouterr()
        assert (
            main(
                [
                    "steer",
                    "search",
                    str(vec_dir),
                    *model,
                    "--dataset",
                    str(data),
                    "--multipliers",
                    "-4",
                    "4",
                    "--max-layer-fraction",
                    "1",
                    "--judge-tokens",
                    "3",
                    "--judge-candidates",
                    "2",
                    *extra,
                    "--json",
                    str(out_json),
                    "--overwrite",
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        payload = json.loads(out_json.read_text())
        sel = payload["selection"]
        assert sel["rule"] == {"kl_limit": float(extra[1]), "max_layer_fraction": 1.0, "judge_candidates": 2, "maximize": True}
        rows = [ScreenRow(r["hook"], r["layer"], r["multiplier"], r["score_delta"], r["kl_mean"]) for r in payload["records"]]
        judged = {(c["hook"], c["multiplier"]): c["rate"] for c in sel["candidates"] if c["judged"]}
        unsteered = payload["judge"]["unsteered"]["prompts"]["rate"] if payload["judge"] else None
        rule = LayerRule(kl_limit=float(extra[1]), max_layer_fraction=1.0, judge_candidates=2, maximize=True)
        expected, shortlist = brute_force(rows, rule, 2, judged if judged else None, unsteered)
        assert (payload["best"]["hook"], payload["best"]["multiplier"]) == expected == (sel["hook"], sel["multiplier"])
        assert sorted(shortlist) == sorted((c["hook"], c["multiplier"]) for c in sel["candidates"] if c["shortlisted"])
        assert f"rule ({sel['selection']}): {sel['selected_by']}" in out
        if extra[1] == "0":  # every setting moves the KL above 0: the least disruptive ones are compared
            assert sel["shortlist"] == "least-kl" and "no setting keeps KL <= 0" in out
        if "--judge-tokens" in extra[2:]:
            assert payload["judge"] is None and sel["selection"] == "next-token log-odds"
        else:
            assert len(judged) == 2 and payload["judge"]["steered"]["prompts"]["n"] == 2
