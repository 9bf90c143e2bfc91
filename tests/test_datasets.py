import json

import numpy as np
import pytest

from geomprobe.activations.datasets import BUNDLED, load_prompt_set, prompts_from_texts, render_prompt
from geomprobe.core.errors import GeomprobeError


def test_bundled_sets_meet_their_datasheet():
    hh = load_prompt_set("harmful-harmless")
    counts = dict(zip(hh.label_names, np.bincount(hh.labels)))
    assert counts["harmful"] >= 150 and counts["harmless"] >= 150
    honesty = load_prompt_set("honesty")
    assert set(honesty.label_names) == {"honest", "dishonest"}
    pairs = honesty.pair_ids
    assert len(set(pairs.tolist())) >= 150
    for pair in np.unique(pairs):
        rows = [honesty.prompts[i] for i in np.flatnonzero(pairs == pair)]
        assert sorted(honesty.label_names[r.label] for r in rows) == ["dishonest", "honest"]
        assert rows[0].messages[-1] == rows[1].messages[-1]  # same true statement in both members
        assert rows[0].ends_with_assistant
    control = load_prompt_set("control")
    assert len(control) >= 200 and control.label_names == ["control"]
    texts = [p.messages[-1][1] for s in (hh, control) for p in s.prompts]
    assert len(texts) == len(set(texts))


def test_reference_class_comes_first():
    assert load_prompt_set("harmful-harmless").label_names == ["harmless", "harmful"]
    assert load_prompt_set("honesty").label_names == ["honest", "dishonest"]


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_three_row_formats_render_like_the_chat_template(tmp_path, tiny_llama):
    tok = tiny_llama.tokenizer
    path = _write(
        tmp_path,
        "mixed.jsonl",
        [
            {"text": "How do I bake bread?", "label": "a"},
            {
                "messages": [{"role": "user", "content": "Tell me a fact."}, {"role": "assistant", "content": "Water boils."}],
                "label": "b",
            },
            {"prompt": "Write a poem.", "response": "The sea is wide", "label": "a"},
        ],
    )
    ps = load_prompt_set(path)
    assert ps.label_names == ["a", "b"] and ps.labels.tolist() == [0, 1, 0]
    rendered = ps.render(tok)
    expected0 = tok.apply_chat_template(
        [{"role": "user", "content": "How do I bake bread?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered[0].text == expected0
    # An assistant final message is an unfinished response: no end-of-turn after it.
    assert rendered[1].text.endswith("Water boils.")
    assert rendered[2].text.endswith("The sea is wide")
    for r, content in zip(rendered, ["How do I bake bread?", "Water boils.", "The sea is wide"]):
        start, end = r.span
        assert tok.decode(r.token_ids[start:end]).strip() == content
        assert r.token_ids == tok(r.text, add_special_tokens=False)["input_ids"]


def test_no_chat_template_uses_raw_text(tiny_llama):
    ps = prompts_from_texts(["plain words here"])
    r = render_prompt(ps.prompts[0], tiny_llama.tokenizer, chat_template=False)
    assert r.text == "plain words here"
    assert r.span == (0, len(r.token_ids))


def test_csv_and_integer_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello there,1\nbye now,0\nagain,1\n")
    ps = load_prompt_set(path)
    assert ps.label_names == ["0", "1"] and ps.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "a", "label": 0}\n{"text": "b", "label": \n', "line 2"),
        ("", "no rows"),
        ('{"label": 1}\n', "needs 'text'"),
        ('{"text": "a", "label": 1}\n{"text": "b"}\n', "no 'label'"),
        ('["text"]\n', "JSON object"),
    ],
)
def test_bad_rows_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(GeomprobeError, match=message):
        load_prompt_set(path)


def test_bad_sources(tmp_path):
    with pytest.raises(GeomprobeError, match="bundled name"):
        load_prompt_set("no-such-set")
    with pytest.raises(GeomprobeError, match="directory"):
        load_prompt_set(tmp_path)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"text": "caf\xe9", "label": 1}\n'.encode("latin-1"))
    with pytest.raises(GeomprobeError, match="UTF-8"):
        load_prompt_set(bad)


def test_limit_is_stratified_and_keeps_pairs_whole():
    full = load_prompt_set("harmful-harmless")
    sub = load_prompt_set("harmful-harmless", limit=40)
    assert len(sub) == 40
    assert abs(int((sub.labels == 0).sum()) - 20) <= 1
    honesty = load_prompt_set("honesty", limit=30)
    counts = np.unique(honesty.pair_ids, return_counts=True)[1]
    assert (counts == 2).all() and len(honesty) == 30
    assert load_prompt_set("harmful-harmless", limit=40).labels.tolist() == sub.labels.tolist()  # seeded
    assert set(BUNDLED) == {"harmful-harmless", "honesty", "control"} and len(full) > 300
