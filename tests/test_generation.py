"""The generation engine (geomprobe.models.complete) against Hugging Face generate run one prompt at a time."""

from __future__ import annotations

import pytest
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.models import (
    GenerationModel,
    as_generation_model,
    complete,
    default_stop_ids,
    load_checkpoint,
    render_prompts,
)
from geomprobe.models.generation import encode_left

# Deliberately longest first: length sorting reorders them, results must not.
PROMPTS = [
    "Tell me about the history of the Roman empire and its roads, in detail please.",
    "How do I bake bread?",
    "Write a short poem about the sea, the wind and the gulls.",
    "Hi",
    "What is the capital of France?",
]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def ckpt(request, tiny_llama_dir, tiny_gpt2_dir):
    return load_checkpoint(tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir)


def reference(ckpt, prompts, max_new_tokens, chat=True, hook=None):
    """Each prompt alone (no padding), rendered by hand, through Hugging Face generate; no early stop."""
    tok = ckpt.tokenizer
    rows = []
    for text in prompts:
        if chat:
            rendered = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
            ids = tok(rendered, return_tensors="pt", add_special_tokens=False).input_ids
        else:
            ids = tok(text, return_tensors="pt").input_ids
        handle = hook() if hook is not None else None
        try:
            with torch.no_grad():
                out = ckpt.hf_model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=tok.pad_token_id,
                )
        finally:
            if handle is not None:
                handle.remove()
        rows.append(out[0, ids.shape[1] :].tolist())
    return rows


@pytest.mark.parametrize("chat", [True, False])
def test_matches_unpadded_generation_in_input_order(ckpt, chat):
    expected = reference(ckpt, PROMPTS, 8, chat=chat)
    batches = []

    def record(batch):
        batches.append(batch.rows)
        return torch.no_grad()

    got = complete(ckpt, PROMPTS, max_new_tokens=8, batch_size=2, chat=chat, stop_ids=(), hook_context=record)
    assert got.token_ids == expected
    assert got.texts == [ckpt.tokenizer.decode(r, skip_special_tokens=True) for r in expected]
    assert got.finished == [False] * len(PROMPTS) and got.prompts == PROMPTS
    # Batches were formed by token length (shortest first), not in input order.
    lengths = [len(ids) for ids in ckpt.tokenizer(got.rendered, add_special_tokens=not chat).input_ids]
    assert [i for rows in batches for i in rows] == sorted(range(len(PROMPTS)), key=lambda i: lengths[i])
    assert batches[0] != [0, 1]


def test_per_row_stop_ids_and_early_exit(ckpt):
    full = reference(ckpt, PROMPTS[:3], 10)
    # Row 0 stops at the first occurrence of its fourth token; row 1 at a token it never makes;
    # row 2 at its second token.
    stop0 = full[0][3]
    never = next(t for t in range(len(ckpt.tokenizer)) if t not in full[1])
    stops = [[stop0], [never], {full[2][1]}]
    got = complete(ckpt, PROMPTS[:3], max_new_tokens=10, batch_size=3, stop_ids=stops)
    cut0, cut2 = full[0].index(stop0), full[2].index(full[2][1])
    assert got.token_ids == [full[0][:cut0], full[1], full[2][:cut2]]
    assert got.finished == [True, False, True]

    # When every row has stopped the batch ends: count the forward passes.
    calls = []

    def count(batch):
        handle = ckpt.hf_model.register_forward_hook(lambda *args: calls.append(1))

        class Remove:
            def __enter__(self):
                return None

            def __exit__(self, *exc):
                handle.remove()

        return Remove()

    done = complete(ckpt, PROMPTS[:3:2], max_new_tokens=10, batch_size=2, stop_ids=[[stop0], [full[2][1]]], hook_context=count)
    assert done.finished == [True, True]
    assert len(calls) == max(cut0, cut2) + 1 < 10


def test_default_stop_ids_and_shared_stop_list(ckpt):
    tok, config = ckpt.tokenizer, ckpt.hf_model.generation_config
    saved = config.eos_token_id
    try:
        config.eos_token_id = [tok.eos_token_id, 7]
        assert default_stop_ids(ckpt) == {tok.eos_token_id, 7}
        config.eos_token_id = None
        assert default_stop_ids(ckpt) == {tok.eos_token_id}
    finally:
        config.eos_token_id = saved
    full = reference(ckpt, PROMPTS[:2], 6)
    shared = full[0][2]
    got = complete(ckpt, PROMPTS[:2], max_new_tokens=6, stop_ids=[shared])
    for row, ids, finished in zip(full, got.token_ids, got.finished):
        assert ids == (row[: row.index(shared)] if shared in row else row) and finished == (shared in row)
    with pytest.raises(GeomprobeError, match="2 stop-id lists for 3 prompts"):
        complete(ckpt, PROMPTS[:3], max_new_tokens=2, stop_ids=[[1], [2]])


def test_hook_context_changes_outputs_as_the_same_hook_by_hand(ckpt):
    """A hook that adds to the residual stream after block 0, through the engine and by hand."""
    hf = ckpt.hf_model
    blocks = hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers
    shift = 4.0 * torch.randn(ckpt.hf_model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def add(mod, args, out):
        return (out[0] + shift,) + tuple(out[1:]) if isinstance(out, tuple) else out + shift

    def register():
        return blocks[0].register_forward_hook(add)

    class Hooked:
        def __init__(self, batch):
            self.handle = None

        def __enter__(self):
            self.handle = register()

        def __exit__(self, *exc):
            self.handle.remove()

    expected = reference(ckpt, PROMPTS, 6, hook=register)
    got = complete(ckpt, PROMPTS, max_new_tokens=6, batch_size=2, stop_ids=(), hook_context=Hooked)
    assert got.token_ids == expected
    assert expected != reference(ckpt, PROMPTS, 6)  # the hook matters
    assert not blocks[0]._forward_hooks  # removed again


def test_left_padding_leaves_the_tokenizer_alone(ckpt):
    tok = ckpt.tokenizer
    saved, tok.padding_side = tok.padding_side, "right"
    try:
        enc = encode_left(tok, PROMPTS[:3], add_special_tokens=True)
        assert tok.padding_side == "right"
        singles = [tok(t).input_ids for t in PROMPTS[:3]]
        width = max(map(len, singles))
        assert enc["input_ids"].tolist() == [[tok.pad_token_id] * (width - len(s)) + s for s in singles]
        assert enc["attention_mask"].tolist() == [[0] * (width - len(s)) + [1] * len(s) for s in singles]
        complete(ckpt, PROMPTS, max_new_tokens=2, batch_size=3)
        assert tok.padding_side == "right"
    finally:
        tok.padding_side = saved


def test_model_shapes_give_the_same_generations(tiny_llama, tiny_llama_dir):
    ckpt = load_checkpoint(tiny_llama_dir)
    kw = dict(max_new_tokens=5, batch_size=2, stop_ids=())
    plain = complete(ckpt, PROMPTS, **kw).token_ids
    assert complete((ckpt.hf_model, ckpt.tokenizer), PROMPTS, **kw).token_ids == plain
    assert complete(tiny_llama, PROMPTS, **kw).token_ids == plain  # through the bridge
    gm = as_generation_model(tiny_llama)
    assert isinstance(gm, GenerationModel) and gm.device == tiny_llama.device and gm.tokenizer is tiny_llama.tokenizer
    assert as_generation_model(gm) is gm
    with pytest.raises(GeomprobeError, match="LoadedModel"):
        as_generation_model("gpt2")
    with pytest.raises(GeomprobeError, match="tuple of 3"):
        as_generation_model((ckpt.hf_model, ckpt.tokenizer, None))


def test_rendering_matches_the_cache(tiny_llama):
    from geomprobe.activations.datasets import prompts_from_texts

    tok = tiny_llama.tokenizer
    cached = [r.text for r in prompts_from_texts(PROMPTS).render(tok, True)]
    assert render_prompts(tok, PROMPTS) == cached
    assert render_prompts(tok, PROMPTS, chat=False) == PROMPTS
    with pytest.raises(GeomprobeError, match="prompt 2 must be a non-empty string"):
        render_prompts(tok, ["ok", "  "])


def test_sampling_is_seeded_and_progress_is_reported(ckpt):
    kw = dict(max_new_tokens=6, batch_size=2, stop_ids=(), do_sample=True, temperature=1.5)
    seen = []
    a = complete(ckpt, PROMPTS, seed=3, progress=lambda done, total: seen.append((done, total)), **kw)
    assert a.token_ids == complete(ckpt, PROMPTS, seed=3, **kw).token_ids
    assert a.token_ids != complete(ckpt, PROMPTS, seed=4, **kw).token_ids
    assert seen == [(2, 5), (4, 5), (5, 5)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompts=[]), "no prompts"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(do_sample=True, temperature=0.0), "temperature > 0"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_llama_dir, kwargs, message):
    ckpt = load_checkpoint(tiny_llama_dir)
    args = dict(prompts=PROMPTS[:1], max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(GeomprobeError, match=message):
        complete(ckpt, args.pop("prompts"), **args)


@pytest.mark.default_model
def test_default_model_matches_unpadded_generation(default_model):
    """SmolLM2 stops at its end-of-turn token: rows end early, finished, and match unpadded generation."""
    prompts = ["Hi", "What is 2+2?", "Tell me about the history of the Roman empire and its roads, in detail please."]
    full = reference(default_model, prompts, 24)
    got = complete(default_model, prompts, max_new_tokens=24, batch_size=3)
    stops = default_stop_ids(default_model)
    for row, ids, finished in zip(full, got.token_ids, got.finished):
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        assert ids == row[:cut] and finished == (cut < len(row))
    assert got.finished[0] and not got.finished[2]
