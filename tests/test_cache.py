"""The cache against the model's own forward pass, and its file-level guarantees."""

import json

import h5py
import numpy as np
import pytest
import torch

import geomprobe
from geomprobe.activations.collect import cache_activations, pooled_activations
from geomprobe.activations.datasets import load_prompt_set, prompts_from_texts
from geomprobe.activations.store import partial_path
from geomprobe.core.errors import GeomprobeError

TEXTS = [
    "How do I bake bread at home?",
    "Hi",
    "Tell me about the history of the Roman empire and its roads, in detail please.",
    "Water boils at one hundred degrees.",
    "Write a short poem about the sea.",
]


def _capture(store, key):
    """A forward hook that records a module's (first) output for batch row 0 and changes nothing."""

    def hook(module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        store.setdefault(key, tensor[0].detach().clone())

    return hook


def _hf_hidden(model, token_ids):
    """hidden_states of one unpadded prompt from the Hugging Face model itself."""
    with torch.no_grad():
        out = model.hf_model(torch.tensor([token_ids]), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_batched_equals_one_prompt_at_a_time_and_hf(request, tmp_path, fixture):
    model = geomprobe.load_model(request.getfixturevalue(fixture), device="cpu")
    ps = prompts_from_texts(TEXTS, labels=["a", "b", "a", "b", "a"])
    batched = cache_activations(model, ps, tmp_path / "b.h5", poolings="last,mean,all", batch_size=5, hooks="resid_post:0")
    single = cache_activations(model, ps, tmp_path / "s.h5", poolings="last,mean,all", batch_size=1, hooks="resid_post:0")
    hook = "blocks.0.hook_resid_post"
    with geomprobe.open_cache(batched.path) as b, geomprobe.open_cache(single.path) as s:
        for pooling in ("last", "mean", "all"):
            np.testing.assert_allclose(b.read(hook, pooling), s.read(hook, pooling), rtol=1e-5, atol=1e-5)
        offsets, ids, start, end = b.token_offsets, b.token_ids, b.response_start, b.response_end
        last, mean, every = b.read(hook, "last"), b.read(hook, "mean"), b.read(hook, "all")
        for i in range(len(TEXTS)):
            tokens = ids[offsets[i] : offsets[i + 1]].tolist()
            hidden = _hf_hidden(model, tokens)[1]  # output of block 0
            np.testing.assert_allclose(last[i], hidden[-1], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(mean[i], hidden[start[i] : end[i]].mean(0), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(every[offsets[i] : offsets[i + 1]], hidden, rtol=1e-5, atol=1e-5)
        assert b.texts == [r.text for r in ps.render(model.tokenizer)]


def test_other_hook_points_match_hf_modules(tiny_llama, tmp_path):
    model = tiny_llama
    ps = prompts_from_texts(TEXTS[:3])
    captured = {}
    layer = model.hf_model.model.layers[1]
    handles = [
        layer.mlp.register_forward_hook(_capture(captured, "mlp")),
        layer.self_attn.register_forward_hook(_capture(captured, "attn")),
        layer.register_forward_hook(_capture(captured, "post")),
    ]
    rendered = ps.render(model.tokenizer)
    try:
        with torch.no_grad():
            hidden = model.hf_model(torch.tensor([rendered[0].token_ids]), output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    got = pooled_activations(
        model,
        ps,
        ["blocks.1.hook_mlp_out", "blocks.1.hook_attn_out", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
        poolings="last",
    )
    np.testing.assert_allclose(got["blocks.1.hook_mlp_out"]["last"][0], captured["mlp"][-1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["blocks.1.hook_attn_out"]["last"][0], captured["attn"][-1].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["blocks.1.hook_resid_pre"]["last"][0], hidden[1][0, -1].numpy(), rtol=1e-5, atol=1e-5)
    # The last block's output, before the final norm (HF's last hidden state has the norm applied).
    np.testing.assert_allclose(got["blocks.1.hook_resid_post"]["last"][0], captured["post"][-1].numpy(), rtol=1e-5, atol=1e-5)


def test_only_requested_hooks_are_stored(tiny_llama, tmp_path):
    path = cache_activations(tiny_llama, prompts_from_texts(TEXTS[:2]), tmp_path / "c.h5", hooks=["mlp_out:1"]).path
    with h5py.File(path) as f:
        assert list(f["activations"]) == ["blocks.1.hook_mlp_out"]
        assert sorted(f["activations/blocks.1.hook_mlp_out"]) == ["last", "mean"]


def test_file_contents_and_read_api(tiny_llama, tmp_path):
    path = tmp_path / "hh.h5"
    result = cache_activations(tiny_llama, "harmful-harmless", path, limit=12, batch_size=5)
    assert result.n_prompts == 12 and path.exists() and not partial_path(path).exists()
    X = geomprobe.read_activations(path, "blocks.1.hook_resid_post")
    y = geomprobe.read_labels(path)
    assert X.shape == (12, 64) and X.dtype == np.float32 and y.shape == (12,)
    with geomprobe.open_cache(path) as cache:
        assert cache.label_names == ["harmless", "harmful"]
        assert cache.attrs["model_id"] == tiny_llama.model_id
        assert cache.attrs["chat_template_applied"] and "im_start" in cache.attrs["chat_template"]
        assert cache.attrs["geomprobe_version"] == geomprobe.__version__
        assert cache.attrs["dataset_sha256"] == load_prompt_set("harmful-harmless").sha256
        assert {"created_utc", "model_revision", "model_dtype"} <= set(cache.attrs)
        assert json.loads(cache.attrs["hooks"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        assert cache.sources[0]["label"] in ("harmful", "harmless")
        np.testing.assert_array_equal(cache.read("blocks.1.hook_resid_post", rows=np.array([3, 1])), X[[3, 1]])
        chunks = np.concatenate([c for _, c in cache.iter_chunks("blocks.1.hook_resid_post", chunk_rows=5)])
        np.testing.assert_array_equal(chunks, X)
    summary = result.summaries[0]
    assert summary.centroid_distance is not None and summary.mean_norm > 0


def test_16_bit_storage(tiny_llama, tmp_path):
    ps = prompts_from_texts(TEXTS)
    ref = pooled_activations(tiny_llama, ps, "resid_post:1", poolings="last")["blocks.1.hook_resid_post"]["last"]
    for store_dtype, tol in (("float16", 1e-3), ("bfloat16", 8e-3)):
        path = cache_activations(
            tiny_llama, ps, tmp_path / f"{store_dtype}.h5", hooks="resid_post:1", poolings="last", store_dtype=store_dtype
        ).path
        got = geomprobe.read_activations(path, "blocks.1.hook_resid_post")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_float16_overflow_is_an_error_and_leaves_no_file(tiny_llama_dir, tmp_path):
    model = geomprobe.load_model(tiny_llama_dir, device="cpu")
    with torch.no_grad():
        model.hf_model.model.embed_tokens.weight.mul_(1e6)
    out = tmp_path / "big.h5"
    with pytest.raises(GeomprobeError, match="overflows float16"):
        cache_activations(model, prompts_from_texts(TEXTS), out, hooks="resid_pre:0", poolings="all", store_dtype="float16")
    assert not out.exists() and not partial_path(out).exists()


def test_existing_output_is_refused_and_kept(tiny_llama, tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"precious")
    with pytest.raises(GeomprobeError, match="--overwrite"):
        cache_activations(tiny_llama, prompts_from_texts(TEXTS), out)
    assert out.read_bytes() == b"precious"
    with pytest.raises(GeomprobeError, match="out of range"):
        cache_activations(tiny_llama, prompts_from_texts(TEXTS), tmp_path / "y.h5", hooks="resid_post:5")
    with pytest.raises(GeomprobeError, match="unknown pooling"):
        cache_activations(tiny_llama, prompts_from_texts(TEXTS), tmp_path / "y.h5", poolings="max")


def test_incomplete_or_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(GeomprobeError, match="not a readable HDF5"):
        geomprobe.open_cache(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(GeomprobeError, match="not a geomprobe"):
        geomprobe.open_cache(tmp_path / "other.h5")
    path = geomprobe.write_cache(tmp_path / "ok.h5", {"blocks.0.hook_resid_post": np.ones((2, 3))}, [0, 1])
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(GeomprobeError, match="incomplete"):
        geomprobe.open_cache(path)


def test_default_model_last_and_mean_equal_hidden_states(default_model, tmp_path):
    model = default_model
    ps = load_prompt_set("honesty", limit=6)
    hooks = ["resid_post:0,14,28,29"]
    path = cache_activations(model, ps, tmp_path / "d.h5", hooks=hooks, batch_size=3).path
    final = model.hf_model.model.layers[-1]
    with geomprobe.open_cache(path) as cache:
        offsets, ids, start, end = cache.token_offsets, cache.token_ids, cache.response_start, cache.response_end
        for i in range(len(ps)):
            tokens = ids[offsets[i] : offsets[i + 1]].tolist()
            captured = {}
            handle = final.register_forward_hook(_capture(captured, "x"))
            try:
                hidden = _hf_hidden(model, tokens)
            finally:
                handle.remove()
            for layer in (0, 14, 28):
                hook = f"blocks.{layer}.hook_resid_post"
                np.testing.assert_allclose(cache.read(hook, "last")[i], hidden[layer + 1][-1], rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(
                    cache.read(hook, "mean")[i], hidden[layer + 1][start[i] : end[i]].mean(0), rtol=1e-5, atol=1e-4
                )
            np.testing.assert_allclose(
                cache.read("blocks.29.hook_resid_post", "last")[i], captured["x"][-1].numpy(), rtol=1e-5, atol=1e-4
            )
        # The honesty rows end in an unfinished assistant response: mean covers just the statement.
        text = model.tokenizer.decode(ids[offsets[0] + start[0] : offsets[0] + end[0]])
        assert text.strip() == ps.prompts[0].messages[-1][1]
