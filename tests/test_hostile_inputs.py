"""Hostile input (issue 16, part 1): prompt text HDF5 or the tokenizer cannot take, prompts longer than
the context, final messages that look like the template, and caches or sidecars edited field by field.

Every failure is one GeomprobeError line naming the row or file, and nothing already on disk changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import geomprobe
import geomprobe.cli
from geomprobe.activations.collect import cache_activations, pooled_activations
from geomprobe.activations.datasets import Prompt, PromptSet, load_prompt_set, prompts_from_texts, render_prompt
from geomprobe.activations.format import CHECKSUM_ATTR, FORMAT_MINOR
from geomprobe.activations.store import CacheFile, open_cache, write_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.validate import sha256_of_array, sha256_of_texts

HOOK = "blocks.0.hook_resid_post"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(model, token_ids: list[int], layer: int = 0) -> np.ndarray:
    """Output of block ``layer`` for one unpadded prompt, from the Hugging Face model itself."""
    with torch.no_grad():
        out = model.hf_model(torch.tensor([token_ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].numpy()


# -- 1. text HDF5 or the tokenizer cannot take ----------------------------------------------------
@pytest.mark.parametrize(
    "line, expect",
    [
        ('{"text": "a\\u0000b", "label": 0}', "NUL character"),
        ('{"text": "bad \\ud800 surrogate", "label": 0}', "lone UTF-16 surrogate"),
        ('{"text": "fine", "label": 0, "note": "x\\udfffy"}', "lone UTF-16 surrogate"),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\u0000"}], "label": 0}',
            "NUL character",
        ),
        ('{"text": "fine", "label": "evil\\u0000"}', "NUL character"),
    ],
)
def test_untakeable_text_names_the_row(tmp_path, line, expect):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n' + line + "\n")
    with pytest.raises(GeomprobeError, match=expect) as info:
        load_prompt_set(path)
    assert f"{path}:2" in str(info.value) and "\n" not in str(info.value)


def test_untakeable_text_in_csv_and_in_memory(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,0\na\x00b,1\n")
    with pytest.raises(GeomprobeError, match=r"d\.csv:3 holds a NUL"):
        load_prompt_set(path)
    with pytest.raises(GeomprobeError, match="prompt 2 holds a lone"):
        prompts_from_texts(["ok", "x\ud83dy"])
    with pytest.raises(GeomprobeError, match="text 1 holds a NUL"):
        write_cache(tmp_path / "c.h5", {HOOK: np.zeros((1, 4), np.float32)}, [0], ["a"], texts=["a\x00"])
    assert not (tmp_path / "c.h5").exists()


def test_csv_takes_fields_over_the_csv_module_limit(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + "word " * 40_000 + ",1\nshort,0\n")
    ps = load_prompt_set(path)
    assert len(ps.prompts[0].messages[0][1]) == 200_000


def test_other_control_characters_are_stored_as_given(tiny_llama, tmp_path):
    texts = ["tab\there", "escape \x1b[31m red", "bell\x07 and form\x0cfeed", "del\x7f"]
    ps = prompts_from_texts(texts, labels=[0, 1, 0, 1])
    result = cache_activations(tiny_llama, ps, tmp_path / "c.h5", hooks="resid_post:0")
    with open_cache(result.path) as cache:
        rendered = [r.text for r in ps.render(tiny_llama.tokenizer)]
        assert cache.texts == rendered
        assert all(t in r for t, r in zip(texts, cache.texts))
        assert [s["text"] for s in cache.sources] == texts


# -- 1b. prompts longer than the context, checked before the model runs ---------------------------
def _long_set(n_words: int) -> PromptSet:
    return prompts_from_texts(["short one", "lots of words " * n_words, "another short"], labels=[0, 1, 0])


def test_too_long_is_refused_before_the_model_runs(tiny_llama, tmp_path):
    calls = []
    handle = tiny_llama.hf_model.base_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(GeomprobeError, match=r"prompt 2 has \d+ tokens, more than the model's context of 256"):
            cache_activations(tiny_llama, _long_set(200), tmp_path / "c.h5", hooks="resid_post:0")
        with pytest.raises(GeomprobeError, match="context of 256"):
            pooled_activations(tiny_llama, _long_set(200), hooks="resid_post:0")
    finally:
        handle.remove()
    assert calls == []
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GeomprobeError, match="--truncate must be left or right"):
        cache_activations(tiny_llama, _long_set(200), tmp_path / "c.h5", hooks="resid_post:0", truncate="middle")


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_keeps_the_chosen_side_and_says_so(tiny_llama, tmp_path, side):
    ps = _long_set(200)
    full = [r.token_ids for r in ps.render(tiny_llama.tokenizer)]
    result = cache_activations(tiny_llama, ps, tmp_path / "c.h5", hooks="resid_post:0", truncate=side, poolings="last,mean")
    with open_cache(result.path) as cache:
        assert cache.attrs["truncate"] == side and cache.attrs["context_limit"] == 256
        assert cache.attrs["truncated_rows"] == 1 and cache.attrs["truncated_tokens"] == len(full[1]) - 256
        offsets, ids = cache.token_offsets, cache.token_ids
        kept = ids[offsets[1] : offsets[2]].tolist()
        assert kept == (full[1][-256:] if side == "left" else full[1][:256])
        assert ids[offsets[0] : offsets[1]].tolist() == full[0]  # short rows untouched
        hidden = _hidden(tiny_llama, kept)
        start, end = int(cache.response_start[1]), int(cache.response_end[1])
        np.testing.assert_allclose(cache.read(HOOK, "last")[1], hidden[-1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(cache.read(HOOK, "mean")[1], hidden[start:end].mean(0), rtol=1e-5, atol=1e-5)
        # The span holds exactly the message's surviving tokens: none of the template's.
        tok = tiny_llama.tokenizer
        message = tok("lots of words " * 200, add_special_tokens=False)["input_ids"]
        n_before = len(tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"])
        n_after = len(tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
        if side == "left":
            assert end == 256 - n_after and kept[start:end] == message[len(message) - (end - start) :]
        else:
            assert start == n_before and end == 256 and kept[start:end] == message[: end - start]


# -- 2. mean pooling reads exactly the final message's tokens -------------------------------------
TRICKY = [
    (("user", "user"),),
    (("user", "assistant"),),
    (("user", "hi"), ("assistant", "assistant")),
    (("system", "hello there"), ("user", "hello")),
    (("system", "be brief"), ("user", "be brief")),
    (("user", "im_start"),),
    (("user", "\n"),),
    (("user", "Hi"), ("assistant", "user")),
]


def _chatml_parts(messages) -> tuple[str, str, str]:
    """Text before, of and after the final message, from the tiny model's ChatML template by hand."""
    head = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in messages[:-1])
    role, content = messages[-1]
    after = "" if role == "assistant" else "<|im_end|>\n<|im_start|>assistant\n"
    return head + f"<|im_start|>{role}\n", content, after


def test_mean_pooling_equals_the_final_messages_own_tokens(tiny_llama, tmp_path):
    tok = tiny_llama.tokenizer
    prompts = [Prompt(tuple(m), i % 2, where=f"row {i}") for i, m in enumerate(TRICKY)]
    ps = PromptSet("tricky", prompts, ["a", "b"], "0" * 64)
    result = cache_activations(tiny_llama, ps, tmp_path / "c.h5", hooks="resid_post:0", poolings="mean", batch_size=3)
    with open_cache(result.path) as cache:
        means = cache.read(HOOK, "mean")
        offsets, ids = cache.token_offsets, cache.token_ids
    for i, messages in enumerate(TRICKY):
        before, content, after = _chatml_parts(messages)
        pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in (before, content, after)]
        tokens = ids[offsets[i] : offsets[i + 1]].tolist()
        assert tokens == pieces[0] + pieces[1] + pieces[2], messages  # no token crosses the message's edges
        start, end = len(pieces[0]), len(pieces[0]) + len(pieces[1])
        expected = _hidden(tiny_llama, tokens)[start:end].mean(0)
        np.testing.assert_allclose(means[i], expected, rtol=1e-5, atol=1e-5, err_msg=str(messages))


def test_empty_final_message_is_an_error_naming_the_row(tiny_llama, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "response": "a", "label": 0}\n{"prompt": "q", "response": "", "label": 1}\n')
    ps = load_prompt_set(path)
    with pytest.raises(GeomprobeError, match=rf"{path.name}:2: the final message is empty"):
        cache_activations(tiny_llama, ps, tmp_path / "c.h5", hooks="resid_post:0")
    assert not (tmp_path / "c.h5").exists()
    with pytest.raises(GeomprobeError, match="final message is empty"):
        render_prompt(Prompt((("user", "q"), ("assistant", "")), 0), tiny_llama.tokenizer, chat_template=False)


# -- 3. caches validated field by field on open ------------------------------------------------------
@pytest.fixture()
def good_cache(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    acts = {HOOK: rng.normal(size=(6, 8)).astype(np.float32)}
    return write_cache(
        tmp_path / "good.h5",
        acts,
        [0, 1, 0, 1, 0, 1],
        ["harmless", "harmful"],
        pair_ids=[0, 0, 1, 1, 2, 2],
        texts=[f"prompt {i}" for i in range(6)],
        attrs={"n_layers": 2},
    )


def test_new_caches_carry_minor_version_and_checksums(good_cache):
    with h5py.File(good_cache, "r") as f:
        assert int(f.attrs["format_version"]) == 1 and int(f.attrs["format_minor"]) == FORMAT_MINOR == 1
        digests = json.loads(f.attrs[CHECKSUM_ATTR])
    # Independent recomputation of the documented digests.
    assert digests["labels"] == hashlib.sha256(np.array([0, 1, 0, 1, 0, 1], "<i8").tobytes()).hexdigest()
    assert digests["pair_ids"] == sha256_of_array(np.array([0, 0, 1, 1, 2, 2]))
    joined = b"".join(len(t).to_bytes(8, "little") + t for t in (f"prompt {i}".encode() for i in range(6)))
    assert digests["prompts/text"] == hashlib.sha256(joined).hexdigest() == sha256_of_texts(f"prompt {i}" for i in range(6))


def _attr(name, value):
    def edit(f):
        f.attrs[name] = value

    return edit


def _drop_attr(name):
    def edit(f):
        del f.attrs[name]

    return edit


def _set(name, index, value, keep_checksum=True):
    def edit(f):
        data = f[name][()]
        data[index] = value
        f[name][...] = data
        if not keep_checksum:
            del f.attrs[CHECKSUM_ATTR]

    return edit


def _replace(name, data):
    def edit(f):
        attrs = dict(f[name].attrs)
        del f[name]
        f.create_dataset(name, data=data)
        f[name].attrs.update(attrs)

    return edit


DAMAGE = {
    "label-out-of-range": (_set("labels", 2, 7, keep_checksum=False), "label code 7 is outside -1..1"),
    "label-below-minus-one": (_set("labels", 0, -5, keep_checksum=False), "label code -5"),
    "label-changed": (_set("labels", 0, 1), "labels does not match its SHA-256 checksum"),
    "pair-changed": (_set("pair_ids", 3, 2), "pair_ids does not match its SHA-256 checksum"),
    "pair-below-minus-one": (_set("pair_ids", 3, -9, keep_checksum=False), "pair id -9"),
    "hooks-missing": (_drop_attr("hooks"), "lacks 'hooks'"),
    "d-model-missing": (_drop_attr("d_model"), "lacks 'd_model'"),
    "d-model-string": (_attr("d_model", "8"), "'d_model' must be an integer"),
    "version-string": (_attr("format_version", "x"), "'format_version' must be an integer"),
    "version-float": (_attr("format_version", 1.5), "'format_version' must be an integer"),
    "hooks-not-json": (_attr("hooks", "blocks.0"), "'hooks' is not valid JSON"),
    "hooks-numbers": (_attr("hooks", "[1, 2]"), "'hooks' must be a list of strings"),
    "hooks-number-attr": (_attr("hooks", 3), "'hooks' must be a JSON list in a string"),
    "label-names-object": (_attr("label_names", '{"a": 1}'), "'label_names' must be a list of strings"),
    "pooling-unknown": (_attr("poolings", '["max"]'), "unknown pooling 'max'"),
    "n-layers-list": (_attr("n_layers", "[2]"), "'n_layers' must be an integer"),
    "checksum-not-json": (_attr(CHECKSUM_ATTR, "nope"), "'checksums' attribute is not a JSON object"),
    "labels-missing": (lambda f: f.__delitem__("labels"), "dataset 'labels' is missing"),
    "labels-float": (_replace("labels", np.zeros(6)), "labels holds float64, not integers"),
    "pairs-short": (_replace("pair_ids", np.zeros(4, dtype=np.int64)), "pair_ids has 4 rows but labels has 6"),
    "activations-wrong-width": (_replace(f"activations/{HOOK}/last", np.zeros((6, 5), np.float32)), "expected (6, 8)"),
    "activations-missing": (lambda f: f.__delitem__(f"activations/{HOOK}/last"), "is missing"),
    "stored-as-lie": (lambda f: f[f"activations/{HOOK}/last"].attrs.__setitem__("stored_as", "bfloat16"), "stored as 'bfloat16'"),
    "span-past-end": (_set("prompts/response_end", 0, 99), "response span lies outside"),
    "offsets-broken": (_set("prompts/token_offsets", 3, 50), "token_offsets does not run from 0"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_cache_is_one_line_naming_it(good_cache, tmp_path, case):
    edit, expect = DAMAGE[case]
    bad = tmp_path / f"{case}.h5"
    shutil.copyfile(good_cache, bad)
    with h5py.File(bad, "r+") as f:
        edit(f)
    before = _digest(tmp_path)
    with pytest.raises(GeomprobeError) as info:
        open_cache(bad)
    message = str(info.value)
    assert expect in message and "is damaged" in message and "re-create it with geomprobe cache" in message, message
    assert str(bad) in message and "\n" not in message
    assert _digest(tmp_path) == before


def test_changed_text_fails_its_checksum_when_read(good_cache, tmp_path):
    bad = tmp_path / "text.h5"
    shutil.copyfile(good_cache, bad)
    with h5py.File(bad, "r+") as f:
        f["prompts/text"][2] = "prompt two, edited"
    with open_cache(bad) as cache:  # texts are checked on first read, not on open (they can be large)
        np.testing.assert_array_equal(cache.labels, [0, 1, 0, 1, 0, 1])
        with pytest.raises(GeomprobeError, match="prompts/text does not match its SHA-256 checksum"):
            _ = cache.texts
    with open_cache(bad) as cache, pytest.raises(GeomprobeError, match="prompts/text does not match"):
        cache.verify()


def test_old_cache_without_checksum_or_minor_is_read(good_cache, tmp_path):
    old = tmp_path / "old.h5"
    shutil.copyfile(good_cache, old)
    with h5py.File(old, "r+") as f:
        del f.attrs[CHECKSUM_ATTR]
        del f.attrs["format_minor"]
        f["labels"][0] = 1  # unchecked without a digest, but still in range
    with open_cache(old) as cache:
        cache.verify()
        assert cache.labels.tolist() == [1, 1, 0, 1, 0, 1]


def test_newer_major_version_asks_for_an_upgrade(good_cache, tmp_path):
    new = tmp_path / "new.h5"
    shutil.copyfile(good_cache, new)
    with h5py.File(new, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(GeomprobeError, match="format version 2, newer than this geomprobe reads"):
        CacheFile(new)


def test_damaged_source_json_is_one_line(good_cache, tmp_path):
    bad = tmp_path / "src.h5"
    shutil.copyfile(good_cache, bad)
    with h5py.File(bad, "r+") as f:
        f["prompts/source"][1] = "{not json"
    with open_cache(bad) as cache, pytest.raises(GeomprobeError, match="prompts/source row 1 is not valid JSON"):
        _ = cache.sources


def test_cli_reports_a_damaged_cache_with_exit_2(good_cache, tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    shutil.copyfile(good_cache, bad)
    with h5py.File(bad, "r+") as f:
        f["labels"][0] = 1
    before = _digest(tmp_path)
    code = geomprobe.cli.main(["steer", "screen", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("geomprobe: error: ") and "is damaged" in err[0]
    assert _digest(tmp_path) == before


# -- 3b. artefact sidecars ----------------------------------------------------------------------------
@pytest.fixture()
def artefacts(good_cache, tmp_path):
    from geomprobe.probes import save_probe, train_probes
    from geomprobe.steering import build_from_cache

    probes, _ = train_probes(good_cache, "mean-diff", test_size=0.34, device="cpu")
    probe = save_probe(probes, tmp_path / "probe")
    vector = build_from_cache(good_cache).save(tmp_path / "vector")
    return probe, vector


PROBE_EDITS = {
    "d_model": ("8", "'d_model' must be an integer"),
    "hooks": ("blocks.0.hook_resid_post", "'hooks' must be a list of strings"),
    "format_version": ("x", "'format_version' must be an integer"),
    "method": (3, "'method' must be a string"),
    "label_names": ([0, 1], "'label_names' must be a list of strings"),
    "params": ([1], "'params' must be a JSON object"),
}
VECTOR_EDITS = {
    "d_model": ([8], "'d_model' must be an integer"),
    "hooks": ([0], "'hooks' must be a list of strings"),
    "metadata": ("x", "'metadata' must be a JSON object"),
    "format_version": (True, "'format_version' must be an integer"),
}


@pytest.mark.parametrize("kind, key", [("probe", k) for k in PROBE_EDITS] + [("vector", k) for k in VECTOR_EDITS])
def test_sidecar_with_wrong_types_is_damaged(artefacts, kind, key):
    from geomprobe.probes import load_probe
    from geomprobe.steering.vectors import load_vector

    folder = artefacts[0] if kind == "probe" else artefacts[1]
    sidecar = folder / ("probe.json" if kind == "probe" else "vector.json")
    value, expect = (PROBE_EDITS if kind == "probe" else VECTOR_EDITS)[key]
    side = json.loads(sidecar.read_text())
    side[key] = value
    sidecar.write_text(json.dumps(side))
    before = _digest(folder)
    with pytest.raises(GeomprobeError) as info:
        (load_probe if kind == "probe" else load_vector)(folder)
    message = str(info.value)
    assert expect in message and "is damaged" in message and str(sidecar) in message, message
    assert _digest(folder) == before


def test_probe_tensor_of_the_wrong_width_is_damaged(artefacts):
    from safetensors.numpy import load_file, save_file

    from geomprobe.probes import load_probe

    folder = artefacts[0]
    tensors = load_file(str(folder / "probe.safetensors"))
    tensors[f"{HOOK}.mean"] = np.zeros(5)
    save_file(tensors, str(folder / "probe.safetensors"))
    with pytest.raises(GeomprobeError, match=r"'blocks.0.hook_resid_post.mean' has shape \(5,\)"):
        load_probe(folder)


# -- 5. JSON Lines split at \n only; parser limits as one line (issue 21 part 5) ----------------------
SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c"]  # str.splitlines splits at each


@pytest.mark.parametrize("sep", SEPARATORS)
def test_jsonl_keeps_line_separators_inside_strings(tmp_path, sep):
    rows = [{"text": f"first{sep}half", "label": "harmless"}, {"text": f"x{sep}", "label": "harmful", "note": sep}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    ps = load_prompt_set(path)
    assert [p.messages[-1][1] for p in ps.prompts] == [r["text"] for r in rows]
    assert ps.label_names == ["harmful", "harmless"] or sorted(ps.label_names) == ["harmful", "harmless"]


def test_jsonl_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a", "label": 0}\r\n\r\n   \r\n{"text": "b", "label": 1}\r\n')
    assert [p.messages[-1][1] for p in load_prompt_set(path).prompts] == ["a", "b"]


@pytest.mark.parametrize(
    "body, expect",
    [
        ('{"text": ' + "[" * 50_000 + "]" * 50_000 + ', "label": 0}', "nested too deeply"),
        ('{"text": "a", "label": ' + "7" * 5000 + "}", "integer longer than Python's limit"),
        ('{"text": "a", "label": 0, "x": ' + '{"a": ' * 30_000 + "1" + "}" * 30_000 + "}", "nested too deeply"),
    ],
)
def test_parser_limits_are_one_line(tmp_path, body, expect):
    from geomprobe.probes.grading import load_questions

    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": 0}\n' + body + "\n")
    with pytest.raises(GeomprobeError, match=expect) as info:
        load_prompt_set(path)
    assert "line 2" in str(info.value) and "\n" not in str(info.value)
    questions = tmp_path / "q.jsonl"
    questions.write_text(body.replace('"text"', '"question"') + "\n")
    with pytest.raises(GeomprobeError, match=expect):
        load_questions(questions)


def test_parser_limits_in_sidecars_and_metrics(tmp_path, good_cache):
    from geomprobe.audit import load_metrics
    from geomprobe.probes import load_probe, save_probe, train_probes

    probes, _ = train_probes(good_cache, "mean-diff", test_size=0.34, device="cpu")
    folder = save_probe(probes, tmp_path / "probe")
    (folder / "probe.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(GeomprobeError, match="nested too deeply"):
        load_probe(folder)
    (folder / "probe.json").write_text('{"format": "geomprobe-probe", "format_version": ' + "1" * 5000 + "}")
    with pytest.raises(GeomprobeError, match="integer longer"):
        load_probe(folder)
    (tmp_path / "metrics.json").write_text('{"schema_version": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(GeomprobeError, match="nested too deeply"):
        load_metrics(tmp_path)
