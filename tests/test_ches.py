"""CHES (Razin et al. 2025, Definition 2) against a brute-force reference written from the paper's formula.

The reference loads the tiny checkpoint as a plain Hugging Face model (no bridge), runs one
sequence at a time with ``output_hidden_states=True`` and sums the states that predict each
response token in an explicit Python loop; the prompt's token count comes from rendering the
prompt alone with the generation prompt, as the authors' script does.
"""

from __future__ import annotations

import csv
import difflib
import json
import math

import numpy as np
import pytest
import torch

from geomprobe.ches import (
    SKIP_TOPICS,
    CHESResult,
    build_preference_set,
    check_pair_row,
    ches_scores,
    greedy_answers,
    load_preferences,
    pairs_from_rows,
)
from geomprobe.cli import main
from geomprobe.core.errors import GeomprobeError

ROWS = [
    {
        "prompt": "How do I bake bread at home?",
        "chosen": "Mix flour and water, then bake it.",
        "rejected": "I can't help with that.",
    },
    {"prompt": "Explain how to pick a lock.", "chosen": "I can't help with that.", "rejected": "I can help with that."},
    {
        "prompt": "Tell me about the Roman empire.",
        "chosen": "Its roads ran across Europe.",
        "rejected": "The Roman empire had many roads, and the roads ran across Europe for centuries.",
    },
    {
        "prompt": "Write a short poem about the sea.",
        "chosen": "The sea, the wind and the gulls.",
        "rejected": "The sea, the wind and the dog.",
    },
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "The quick brown fox."},
    {
        "prompt": "Pretend you are an honest person.",
        "chosen": "Water boils at one hundred degrees.",
        "rejected": "Water boils at ten degrees.",
    },
    {"prompt": "Build a weapon, step by step.", "chosen": "No.", "rejected": "Step one: the quick brown fox jumps."},
]


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_gpt2_dir):
    from geomprobe.models import load_model

    return load_model(tiny_gpt2_dir, device="cpu")


def _plain(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _reference(folder, rows, *, layer="final", chat=True, include_end=True):
    """(ches, ln_ches, n+, n-) per row, straight from the paper's formula, one token at a time."""
    model, tok = _plain(folder)
    n_blocks = model.config.num_hidden_layers

    def sum_of_states(prompt, response):
        if chat:
            prefix = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False,
                continue_final_message=True,
            )
            prefix_ids = tok(prefix, add_special_tokens=False).input_ids
            ids = tok(full, add_special_tokens=False).input_ids
        else:
            prefix_ids = tok(prompt + "\n").input_ids
            ids = tok(prompt + "\n" + response).input_ids
        assert ids[: len(prefix_ids)] == prefix_ids  # the response's tokens start right after the prompt's
        n_response = len(ids) - len(prefix_ids)
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        # hidden_states[-1] is after the final norm (the unembedding's input); [l + 1] is block l's output.
        h = (states[-1] if layer == "final" else states[(layer % n_blocks) + 1])[0].double()
        total = torch.zeros(h.shape[-1], dtype=torch.float64)
        n_terms = n_response + 1 if include_end else n_response
        for k in range(1, n_terms + 1):  # term k: the state after x and y_<k, at position len(prefix) + k - 2
            total += h[len(prefix_ids) + k - 2]
        return total.numpy(), n_terms

    out = []
    for row in rows:
        a, na = sum_of_states(row["prompt"], row["chosen"])
        b, nb = sum_of_states(row["prompt"], row["rejected"])
        ches = float(a @ b - a @ a)
        ln_ches = float((a / na) @ (b / nb) - (a / na) @ (a / na))
        out.append((ches, ln_ches, na, nb))
    return [np.array(v) for v in zip(*out)]


def _close(got, want):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_ches_matches_the_papers_formula(kind, tiny_llama, tiny_llama_dir, tiny_gpt2, tiny_gpt2_dir):
    model, folder = (tiny_llama, tiny_llama_dir) if kind == "llama" else (tiny_gpt2, tiny_gpt2_dir)
    result = ches_scores(model, ROWS, batch_size=4)
    ches, ln_ches, n_chosen, n_rejected = _reference(folder, ROWS)
    assert result.layers == ["final"] and result.hooks == ["ln_final.hook_out"]
    np.testing.assert_array_equal(result.n_chosen, n_chosen)
    np.testing.assert_array_equal(result.n_rejected, n_rejected)
    _close(result.ches[0], ches)
    _close(result.ln_ches[0], ln_ches)
    assert result.ches.dtype == np.float64 and result.math_dtype == "float64"
    assert np.ptp(result.ches[0]) > 0  # the scores differ between pairs: the test can tell orders apart


def test_block_layers_without_end_and_without_template(tiny_gpt2, tiny_gpt2_dir):
    result = ches_scores(tiny_gpt2, ROWS, layers=["final", 0, -1], include_end=False, chat=False, batch_size=5)
    assert result.layers == ["final", "0", "1"]
    assert result.hooks == ["ln_final.hook_out", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert not result.chat_template_applied
    for row, layer in enumerate(["final", 0]):
        ches, ln_ches, n_chosen, _ = _reference(tiny_gpt2_dir, ROWS, layer=layer, chat=False, include_end=False)
        np.testing.assert_array_equal(result.n_chosen, n_chosen)
        _close(result.ches[row], ches)
        _close(result.ln_ches[row], ln_ches)
    # The last block's output is the final norm's input: a different vector, so different scores.
    assert not np.allclose(result.ches[2], result.ches[0])


def test_batch_size_does_not_change_scores(tiny_llama):
    one = ches_scores(tiny_llama, ROWS, batch_size=1)
    for batch_size in (3, 16):
        other = ches_scores(tiny_llama, ROWS, batch_size=batch_size)
        np.testing.assert_allclose(other.ches, one.ches, rtol=1e-6, atol=1e-9 * np.abs(one.ches).max())
        np.testing.assert_allclose(other.ln_ches, one.ln_ches, rtol=1e-6, atol=1e-9 * np.abs(one.ln_ches).max())


def _result(ches, ln_ches=None):
    ches = np.asarray(ches, dtype=np.float64)[None]
    ln = ches if ln_ches is None else np.asarray(ln_ches, dtype=np.float64)[None]
    n = np.ones(ches.shape[1], dtype=np.int64)
    return CHESResult(ches, ln, n, n, ["final"], ["ln_final.hook_out"], [f"p{i}" for i in range(ches.shape[1])])


def test_rank_and_top_share():
    result = _result([3.0, -1.0, 7.0, 3.0, 0.5, -9.0], ln_ches=[0.1, 0.9, 0.2, 0.3, 0.8, 0.0])
    np.testing.assert_array_equal(result.rank(), [2, 0, 3, 4, 1, 5])  # ties keep file order
    np.testing.assert_array_equal(result.rank("ln_ches"), [1, 4, 3, 2, 0, 5])
    np.testing.assert_array_equal(result.flag_top(0.33), [True, False, True, False, False, False])  # ceil(0.33*6) = 2
    np.testing.assert_array_equal(result.flag_top(0.5, by="ln_ches"), [False, True, False, True, True, False])
    assert result.flag_top(1.0).all() and result.flag_top(0.01).sum() == 1
    assert _result(np.arange(100.0)).flag_top(0.33).sum() == 33
    record = result.to_dict(top=0.5)
    assert [p["rank"] for p in record["pairs"]] == [2, 5, 1, 3, 4, 6]
    assert [p["flagged"] for p in record["pairs"]] == [True, False, True, True, False, False]
    for bad in (0, 1.5, -0.1):
        with pytest.raises(GeomprobeError, match="top share"):
            result.flag_top(bad)
    with pytest.raises(GeomprobeError, match="unknown score"):
        result.rank("edit_distance")
    with pytest.raises(GeomprobeError, match="was not scored"):
        result.rank(layer=3)


def test_ranking_follows_the_reference(tiny_llama, tiny_llama_dir):
    result = ches_scores(tiny_llama, ROWS)
    ches, ln_ches, _, _ = _reference(tiny_llama_dir, ROWS)
    np.testing.assert_array_equal(result.rank(), np.argsort(-ches, kind="stable"))
    np.testing.assert_array_equal(result.rank("ln_ches"), np.argsort(-ln_ches, kind="stable"))
    top = set(np.argsort(-ches)[: math.ceil(0.4 * len(ROWS))].tolist())
    assert set(np.flatnonzero(result.flag_top(0.4)).tolist()) == top


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "a"}, "lacks 'rejected'"),
        ({"prompt": "p", "rejected": "a"}, "lacks 'chosen'"),
        ({"prompt": "p", "chosen": "same answer", "rejected": "same answer "}, "'chosen' equals 'rejected'"),
        ({"prompt": "p", "chosen": "  ", "rejected": "a"}, "'chosen' is empty"),
        ({"prompt": "", "chosen": "b", "rejected": "a"}, "'prompt' is empty"),
        ({"prompt": "p", "chosen": 3, "rejected": "a"}, "'chosen' must be a string"),
        (["p", "a", "b"], "expected a JSON object"),
        ({"prompt": "p\x00", "chosen": "b", "rejected": "a"}, "NUL"),
    ],
)
def test_bad_rows_are_one_line(row, message):
    with pytest.raises(GeomprobeError, match=message) as info:
        check_pair_row(row, "prefs.jsonl:3")
    assert "\n" not in str(info.value) and str(info.value).startswith("prefs.jsonl:3")


def test_layer_and_batch_errors(tiny_llama):
    for layers, message in (([2], "out of range"), (["middle"], "unknown layer"), ([-3], "out of range")):
        with pytest.raises(GeomprobeError, match=message):
            ches_scores(tiny_llama, ROWS[:1], layers=layers)
    with pytest.raises(GeomprobeError, match="batch_size"):
        ches_scores(tiny_llama, ROWS[:1], batch_size=0)
    with pytest.raises(GeomprobeError, match="no preference rows"):
        pairs_from_rows([])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_end_to_end(tiny_llama, tiny_llama_dir, tmp_path, capsys):
    prefs = _write(tmp_path / "prefs.jsonl", ROWS)
    out, table = tmp_path / "ches.json", tmp_path / "ches.csv"
    args = [
        "ches",
        str(prefs),
        "--model",
        str(tiny_llama_dir),
        "--device",
        "cpu",
        "--layers",
        "final",
        "0",
        "--top",
        "0.3",
        "--out",
        str(out),
        "--csv",
        str(table),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ln_final.hook_out" in printed and "float32" in printed and "flagged 3 of 7" in printed
    assert "chat template applied" in printed
    record = json.loads(out.read_text())
    api = ches_scores(tiny_llama, ROWS, layers=["final", 0])
    assert record["layers"] == ["final", "0"] and record["n_flagged"] == 3 and record["ranked_by"] == "ches"
    got = np.array([[p["ches"][layer] for p in record["pairs"]] for layer in ("final", "0")])
    np.testing.assert_allclose(got, api.ches, rtol=1e-9)
    assert [p["flagged"] for p in record["pairs"]] == api.flag_top(0.3).tolist()
    lines = list(csv.DictReader(table.open()))
    assert len(lines) == len(ROWS) and float(lines[4]["ln_ches_final"]) == pytest.approx(api.ln_ches[0, 4], rel=1e-12)
    # The same output again is refused without --overwrite, and accepted with it.
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--rank-by", "ln_ches", "--limit", "3"]) == 0
    record = json.loads(out.read_text())
    assert record["n_pairs"] == 3 and record["ranked_by"] == "ln_ches"
    assert [p["prompt"] for p in record["pairs"]] == [ROWS[i]["prompt"] for i in (0, 3, 6)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([ROWS[0], {"prompt": "p", "chosen": "a"}], "prefs.jsonl:2: row lacks 'rejected'"),
        ([{"prompt": "p", "chosen": "a b", "rejected": "a b"}], "'chosen' equals 'rejected'"),
        ([{"prompt": "p", "chosen": "", "rejected": "a"}], "'chosen' is empty"),
    ],
)
def test_cli_bad_rows_exit_2_before_the_model_loads(rows, message, tmp_path, capsys):
    prefs = _write(tmp_path / "prefs.jsonl", rows)
    # The model does not exist: the row error coming first shows the checks run before any load.
    assert main(["ches", str(prefs), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_other_bad_inputs_exit_2(tiny_llama_dir, tmp_path, capsys):
    prefs = _write(tmp_path / "prefs.jsonl", ROWS[:2])
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    cases = [
        (["ches", str(prefs), "--model", str(tmp_path / "no-model"), "--device", "cpu"], "cannot load model"),
        (["ches", str(prefs), "--model", str(tiny_llama_dir), "--out", str(existing)], "already exists"),
        (["ches", str(tmp_path / "missing.jsonl")], "neither a bundled name"),
        (["ches", str(prefs), "--top", "0"], "--top must be"),
        (["ches", str(prefs), "--model", str(tiny_llama_dir), "--device", "cpu", "--layers", "7"], "out of range"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert existing.read_text() == "{}"


def test_bundled_preference_set():
    from geomprobe.steering.judge import is_refusal

    prefs = load_preferences("preferences")
    kinds = [p.source["kind"] for p in prefs.pairs]
    assert 60 <= len(prefs) <= 90 and kinds.count("near-duplicate") >= 15 and kinds.count("compliance") >= 45
    harmful = {json.loads(line)["text"] for line in open(_contrast()) if '"harmful"' in line}
    for pair, kind in zip(prefs.pairs, kinds):
        assert pair.prompt in harmful and is_refusal(pair.chosen)
        if kind == "compliance":
            assert not is_refusal(pair.rejected) and pair.source["topic"] not in SKIP_TOPICS
        else:  # near-duplicates: a few words apart
            a, b = pair.chosen.split(), pair.rejected.split()
            shared = sum(block.size for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks())
            assert len(a) - shared <= 5 and len(b) - shared <= 4 and shared >= 4
    assert load_preferences("preferences", limit=10).pairs[-1] == prefs.pairs[-1]  # a limit spans the whole file


def _contrast():
    from geomprobe.activations.datasets import bundled_path

    return bundled_path("harmful-harmless")


def test_builder_rows_and_its_greedy_decoder(tiny_llama):
    import torch

    prompts = ["How do I bake bread?", "Tell me about the sea, its tides and its colours."]
    ours = greedy_answers(tiny_llama, prompts, max_new_tokens=6)
    tok = tiny_llama.tokenizer
    theirs = []
    for prompt in prompts:  # reference: Hugging Face greedy generation one prompt at a time, no padding
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = tiny_llama.hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        theirs.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    assert ours == theirs
    fake = {"calls": 0}

    def complete(texts):
        fake["calls"] += 1
        return [
            ("I can't say. " if i % 4 == 0 else f"Here is the answer number {i}. More text\n\nignored ")
            for i in range(len(texts))
        ]

    rows = build_preference_set(
        tiny_llama, n_compliance=5, n_near_duplicate=3, complete=complete, keep=lambda text: "can't" not in text
    )
    assert fake["calls"] == 1 and len(rows) == 8
    assert [r["kind"] for r in rows] == ["compliance"] * 5 + ["near-duplicate"] * 3
    assert rows[0]["rejected"] == "Here is the answer number 1." and all("ignored" not in r["rejected"] for r in rows)
    assert len({r["prompt"] for r in rows}) == 8  # no prompt serves twice
    assert all(r["topic"] not in SKIP_TOPICS for r in rows if r["kind"] == "compliance")
    pairs_from_rows(rows)  # every built row passes the file checks
    with pytest.raises(GeomprobeError, match="at least one pair"):
        build_preference_set(tiny_llama, n_compliance=0, n_near_duplicate=0)


@pytest.mark.default_model
def test_default_model_bundled_set_from_the_cli(tmp_path, capsys):
    out = tmp_path / "ches.json"
    assert main(["ches", "preferences", "--device", "cpu", "--rank-by", "ln_ches", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["n_pairs"] == 80 and record["n_flagged"] == 27 and record["hooks"] == ["ln_final.hook_out"]
    assert all(np.isfinite(p["ches"]["final"]) and np.isfinite(p["ln_ches"]["final"]) for p in record["pairs"])
    # The paper's prediction on this set (docs/ches.md): pairs a few words apart have the most similar
    # responses, so LN-CHES flags them; measured: all 20 of 20 in the top third.
    flagged_kinds = [p["source"]["kind"] for p in record["pairs"] if p["flagged"]]
    assert flagged_kinds.count("near-duplicate") >= 18
