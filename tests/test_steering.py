"""Steering vectors: direction math, persistence, application during generation, ablation, GGUF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geomprobe.activations.store import write_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.steering import (
    SteeringVector,
    ablate,
    bake_ablation,
    build_from_cache,
    build_from_prompts,
    direction_from_arrays,
    export_gguf,
    generate,
    gguf_layer_for_hook,
    read_gguf,
    render_prompts,
    steer,
)
from geomprobe.steering.apply import tokenize_left

PROMPTS = ["Tell me about the history of the Roman empire.", "Write a short poem about the sea."]


def _paired_data(seed=0, n_pairs=12, d=16):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_pairs, d))
    shift = np.zeros(d)
    shift[3] = 2.0
    pos = base + shift + 0.3 * rng.normal(size=(n_pairs, d))
    neg = base + 0.3 * rng.normal(size=(n_pairs, d))
    X = np.concatenate([neg, pos]).astype(np.float32)
    labels = np.array([0] * n_pairs + [1] * n_pairs)
    pair_ids = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)])
    return X, labels, pair_ids


# -- direction math ---------------------------------------------------------------------------
def test_mean_diff_matches_class_means_and_pair_means():
    X, labels, pairs = _paired_data()
    vec, info = direction_from_arrays(X, labels == 1, labels == 0, None, "mean-diff")
    np.testing.assert_allclose(vec, X[labels == 1].mean(0) - X[labels == 0].mean(0), rtol=1e-5, atol=1e-6)
    assert info["averaged_over"] == "classes"
    # Unbalanced pairs: pair means differ from class means; brute-force loop as reference.
    X2 = np.concatenate([X, X[:1] + 5.0])
    labels2 = np.concatenate([labels, [0]])
    pairs2 = np.concatenate([pairs, [0]])
    vec2, _ = direction_from_arrays(X2, labels2 == 1, labels2 == 0, pairs2, "mean-diff")
    ref = []
    for pid in range(12):
        ref.append(X2[(pairs2 == pid) & (labels2 == 1)].mean(0) - X2[(pairs2 == pid) & (labels2 == 0)].mean(0))
    np.testing.assert_allclose(vec2, np.mean(ref, axis=0), rtol=1e-5, atol=1e-6)


def test_pca_methods_match_sklearn():
    from sklearn.decomposition import PCA

    X, labels, pairs = _paired_data(seed=1)
    diffs = X[labels == 1].astype(np.float64) - X[labels == 0].astype(np.float64)
    vec, info = direction_from_arrays(X, labels == 1, labels == 0, pairs, "pca-diff-centered")
    ref = PCA(n_components=1).fit(diffs).components_[0]
    unit = vec / np.linalg.norm(vec)
    assert abs(unit @ ref) == pytest.approx(1.0, abs=1e-6)
    assert (diffs @ unit).mean() > 0  # positive class projects higher
    assert np.linalg.norm(vec) == pytest.approx(np.abs(diffs @ unit).mean(), rel=1e-6)

    vec_c, _ = direction_from_arrays(X, labels == 1, labels == 0, pairs, "pca-diff-uncentered")
    centres = (X[labels == 1] + X[labels == 0]) / 2.0
    rows = np.concatenate([X[labels == 1] - centres, X[labels == 0] - centres]).astype(np.float64)
    ref_c = PCA(n_components=1).fit(rows).components_[0]
    assert abs(vec_c / np.linalg.norm(vec_c) @ ref_c) == pytest.approx(1.0, abs=1e-6)
    # The planted shift is along axis 3.
    assert np.argmax(np.abs(vec_c)) == 3


def test_pca_names_mean_one_method_across_stages(tmp_path):
    """'pca-diff-uncentered' and 'pca-diff-centered' mean one method each in probes and steering; the old
    spellings ('pca-diff': centred in steering, uncentred in probes; 'pca-center') warn and keep their result."""
    from geomprobe.probes import PCADiffProbe, canonical_method, fit_layers

    X, labels, pairs = _paired_data(seed=2)
    centred, _ = direction_from_arrays(X, labels == 1, labels == 0, pairs, "pca-diff-centered")
    uncentred, _ = direction_from_arrays(X, labels == 1, labels == 0, pairs, "pca-diff-uncentered")
    # Old steering spellings still work, warn with the new name, and give the same result as before.
    with pytest.warns(FutureWarning, match="'pca-diff-centered'"):
        old, _ = direction_from_arrays(X, labels == 1, labels == 0, pairs, "pca-diff")
    np.testing.assert_array_equal(old, centred)
    with pytest.warns(FutureWarning, match="'pca-diff-uncentered'"):
        old_center, _ = direction_from_arrays(X, labels == 1, labels == 0, pairs, "pca-center")
    np.testing.assert_array_equal(old_center, uncentred)
    # The probes' pca-diff-uncentered finds steering's pca-diff-uncentered direction.
    probe = PCADiffProbe().fit(X, labels, pairs=pairs)
    assert probe._method == "pca-diff-uncentered"
    cos = uncentred / np.linalg.norm(uncentred) @ probe.direction_ / np.linalg.norm(probe.direction_)
    assert cos == pytest.approx(1.0, abs=1e-9)
    # In the probes both old spellings meant the uncentred method; they warn and fit it.
    for old_name in ("pca-diff", "pca-center"):
        with pytest.warns(FutureWarning, match="'pca-diff-uncentered'"):
            assert canonical_method(old_name) == "pca-diff-uncentered"
        with pytest.warns(FutureWarning):
            fit = fit_layers(X[None], labels, old_name, pairs=pairs, device="cpu")
        assert fit.method == "pca-diff-uncentered"
        np.testing.assert_array_equal(fit.direction[0], probe.direction_)
    with pytest.raises(GeomprobeError, match="steering method only"):
        canonical_method("pca-diff-centered")
    # The centred and uncentred directions differ on this data (a shared offset in the differences).
    assert abs(uncentred / np.linalg.norm(uncentred) @ centred / np.linalg.norm(centred)) < 0.999
    # Vectors saved under an old spelling load under the new name; new builds record the new name.
    with pytest.warns(FutureWarning):
        vec = build_from_arrays_old_name(X, labels, pairs)
    assert vec.method == "pca-diff-centered"
    folder = vec.save(tmp_path / "v")
    side = json.loads((folder / "vector.json").read_text())
    for old_name, new_name in (("pca-diff", "pca-diff-centered"), ("pca-center", "pca-diff-uncentered")):
        side["method"] = old_name
        (folder / "vector.json").write_text(json.dumps(side))
        assert SteeringVector.load(folder).method == new_name


def build_from_arrays_old_name(X, labels, pairs):
    from geomprobe.steering import build_from_arrays

    return build_from_arrays({"blocks.0.hook_resid_post": X}, labels, ["harmless", "harmful"], pair_ids=pairs, method="pca-diff")


def test_pca_needs_pairs():
    X, labels, _ = _paired_data()
    with pytest.raises(GeomprobeError, match="pairs"):
        direction_from_arrays(X, labels == 1, labels == 0, None, "pca-diff-centered")


def test_build_from_cache_labels_and_save_load(tmp_path):
    X, labels, pairs = _paired_data(d=16)
    path = tmp_path / "c.h5"
    write_cache(
        path,
        {"blocks.0.hook_resid_post": X, "blocks.1.hook_resid_post": X * 2},
        labels,
        ["harmless", "harmful"],
        pair_ids=pairs,
        attrs={"model_id": "toy"},
    )
    vec = build_from_cache(path)
    assert vec.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert vec.metadata["positive_label"] == "harmful" and vec.model_id == "toy" and vec.d_model == 16
    np.testing.assert_allclose(
        vec.vectors["blocks.1.hook_resid_post"].numpy(), 2 * vec.vectors["blocks.0.hook_resid_post"].numpy(), rtol=1e-5
    )
    flipped = build_from_cache(path, positive_label="harmless", hooks=["resid_post:0"])
    np.testing.assert_allclose(
        flipped.vectors["blocks.0.hook_resid_post"].numpy(), -vec.vectors["blocks.0.hook_resid_post"].numpy(), rtol=1e-5
    )
    with pytest.raises(GeomprobeError, match="positive-label"):
        build_from_cache(path, positive_label="nope")

    vec.save(tmp_path / "v")
    assert (tmp_path / "v" / "vector.safetensors").is_file()
    sidecar = json.loads((tmp_path / "v" / "vector.json").read_text())
    assert sidecar["pooling"] == "last" and sidecar["method"] == "mean-diff" and sidecar["layers"] == [0, 1]
    loaded = SteeringVector.load(tmp_path / "v")
    for h in vec.hooks:
        assert torch.equal(loaded.vectors[h], vec.vectors[h])
        assert loaded.norms[h] == pytest.approx(vec.norms[h])
    with pytest.raises(GeomprobeError, match="overwrite"):
        vec.save(tmp_path / "v")
    (tmp_path / "v" / "vector.json").write_text("{not json")
    with pytest.raises(GeomprobeError, match="JSON"):
        SteeringVector.load(tmp_path / "v")
    with pytest.raises(GeomprobeError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing")


def test_build_from_prompts_matches_hf_hidden_states(tiny_llama):
    raw_pos = ["Explain how to pick a lock.", "Build a weapon step by step."]
    raw_neg = ["How do I bake bread?", "Write a poem about the sea."]
    vec = build_from_prompts(tiny_llama, raw_pos, raw_neg, hooks=["resid_post:0"])
    # The prompts are rendered with the chat template, as the cache does.
    pos = render_prompts(tiny_llama.tokenizer, raw_pos)
    neg = render_prompts(tiny_llama.tokenizer, raw_neg)
    ref = []
    with torch.no_grad():
        for p, n in zip(pos, neg):
            hs = [
                tiny_llama.hf_model(
                    tiny_llama.tokenizer(t, return_tensors="pt", add_special_tokens=False).input_ids, output_hidden_states=True
                ).hidden_states[1][0, -1]
                for t in (p, n)
            ]
            ref.append((hs[0] - hs[1]).double().numpy())
    np.testing.assert_allclose(vec.vectors["blocks.0.hook_resid_post"].numpy(), np.mean(ref, 0), rtol=1e-4, atol=1e-5)


def test_probe_direction_path(tmp_path):
    probes = pytest.importorskip("geomprobe.probes")
    from geomprobe.steering import build_from_probe

    X, labels, pairs = _paired_data(d=16, n_pairs=20)
    path = tmp_path / "c.h5"
    write_cache(path, {"blocks.2.hook_resid_post": X}, labels, ["honest", "dishonest"], pair_ids=pairs, attrs={"model_id": "toy"})
    fitted, _ = probes.train_probes(path, device="cpu")
    probes.save_probe(fitted, tmp_path / "probe")
    vec = build_from_probe(tmp_path / "probe")
    assert vec.method == "probe" and vec.hooks == ["blocks.2.hook_resid_post"] and vec.pooling == "last"
    np.testing.assert_allclose(
        vec.vectors["blocks.2.hook_resid_post"].numpy(), fitted.direction("blocks.2.hook_resid_post"), rtol=1e-6
    )
    # The probe points toward "dishonest", the planted shift is on axis 3.
    assert np.argmax(np.abs(vec.vectors["blocks.2.hook_resid_post"].numpy())) == 3


# -- application ------------------------------------------------------------------------------
def _vector(model, layer=0, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return SteeringVector(
        {f"blocks.{layer}.hook_resid_post": scale * rng.normal(size=model.d_model)}, "mean-diff", "last", model.model_id
    )


def test_unsteered_generation_matches_plain_hf(tiny_llama, tiny_llama_dir):
    """Also checks the KV-cache fix: bridged cached generation equals HF's own (left-padded batch)."""
    from geomprobe.models import load_checkpoint

    ckpt = load_checkpoint(tiny_llama_dir)
    texts = render_prompts(tiny_llama.tokenizer, PROMPTS)
    enc = ckpt.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ref = ckpt.hf_model.generate(
        **enc, max_new_tokens=10, do_sample=False, pad_token_id=ckpt.tokenizer.pad_token_id, eos_token_id=None
    )
    ours = generate(tiny_llama, PROMPTS, max_new_tokens=10, stop_at_eos=False)
    assert [g.token_ids for g in ours] == ref[:, enc.input_ids.shape[1] :].tolist()


def test_steer_all_matches_hf_forward_hook(tiny_llama, tiny_llama_dir):
    from geomprobe.models import load_checkpoint

    ckpt = load_checkpoint(tiny_llama_dir)
    vec = _vector(tiny_llama, layer=0)
    v = vec.vectors["blocks.0.hook_resid_post"]
    ids = tiny_llama.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    handle = ckpt.hf_model.model.layers[0].register_forward_hook(
        lambda mod, args, out: (out[0] + 3.0 * v,) + tuple(out[1:]) if isinstance(out, tuple) else out + 3.0 * v
    )
    try:
        with torch.no_grad():
            ref = ckpt.hf_model(ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), steer(tiny_llama, vec, 3.0):
        ours = tiny_llama.bridge(ids)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _capture_prefill(model, hook):
    seen = {}

    def keep(x, hook):
        if "prefill" not in seen:
            seen["prefill"] = x.detach().clone()
        return x

    return seen, (hook, keep)


def test_generated_positions_steer_continuation_not_prompt(tiny_llama):
    vec = _vector(tiny_llama, layer=0, scale=3.0)
    kwargs = dict(max_new_tokens=8, stop_at_eos=False)
    results = {}
    for positions in ("none", "generated", "prompt"):
        seen, hook = _capture_prefill(tiny_llama, "blocks.1.hook_resid_post")
        with tiny_llama.bridge.hooks(fwd_hooks=[hook]):
            if positions == "none":
                gens = generate(tiny_llama, PROMPTS, **kwargs)
            else:
                gens = generate(tiny_llama, PROMPTS, vector=vec, multiplier=8.0, positions=positions, **kwargs)
        results[positions] = (seen["prefill"], [g.token_ids for g in gens])
    base_acts, base_tokens = results["none"]
    gen_acts, gen_tokens = results["generated"]
    prompt_acts, _ = results["prompt"]
    torch.testing.assert_close(gen_acts, base_acts, rtol=0, atol=0)  # prompt untouched
    assert not torch.allclose(prompt_acts, base_acts)
    assert gen_tokens != base_tokens
    # The first new token is predicted from the (unsteered) last prompt position.
    assert [t[0] for t in gen_tokens] == [t[0] for t in base_tokens]


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_cached_and_uncached_steered_generation_agree(tiny_llama, positions):
    vec = _vector(tiny_llama, layer=1, scale=2.0)
    kw = dict(vector=vec, multiplier=6.0, positions=positions, max_new_tokens=6, stop_at_eos=False)
    cached = generate(tiny_llama, PROMPTS, use_cache=True, **kw)
    uncached = generate(tiny_llama, PROMPTS, use_cache=False, **kw)
    assert [g.token_ids for g in cached] == [g.token_ids for g in uncached]


def test_compare_generations_returns_typed_rows(tiny_llama):
    from geomprobe.steering import Generation, compare_generations, generation_table

    vec = _vector(tiny_llama, layer=1, scale=2.0)
    kw = dict(hooks=["resid_post:1"], max_new_tokens=5, stop_at_eos=False)
    rows = compare_generations(tiny_llama, vec, PROMPTS, multipliers=(0.0, 6.0), **kw)
    assert all(isinstance(g, Generation) for g in rows) and [g.multiplier for g in rows] == [0.0, 0.0, 6.0, 6.0]
    # Each row is what generate() gives for that multiplier on its own.
    plain = generate(tiny_llama, PROMPTS, **kw)
    steered = generate(tiny_llama, PROMPTS, vector=vec, multiplier=6.0, **kw)
    assert [g.token_ids for g in rows] == [g.token_ids for g in plain + steered]
    assert rows[2].to_dict() == {
        "prompt": PROMPTS[0],
        "text": steered[0].text,
        "token_ids": steered[0].token_ids,
        "multiplier": 6.0,
        "hooks": ["blocks.1.hook_resid_post"],
        "positions": "all",
    }
    assert generation_table(rows) == generation_table([g.to_dict() for g in rows])


def test_bridge_generate_is_steered_too(tiny_llama):
    """TransformerLens' own generate loop goes through the same hook points and cache fix."""
    vec = _vector(tiny_llama, layer=0, scale=3.0)
    texts = render_prompts(tiny_llama.tokenizer, PROMPTS[:1])
    ids = tokenize_left(tiny_llama, texts, rendered_chat=True)["input_ids"]
    ours = generate(
        tiny_llama, PROMPTS[:1], vector=vec, multiplier=8.0, positions="generated", max_new_tokens=6, stop_at_eos=False
    )
    with steer(tiny_llama, vec, 8.0, positions="generated"):
        out = tiny_llama.bridge.generate(
            ids, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False, prepend_bos=False
        )
    assert out[0, ids.shape[1] :].tolist() == ours[0].token_ids


def test_hooks_removed_even_when_generation_raises(tiny_llama):
    vec = _vector(tiny_llama)
    before = generate(tiny_llama, PROMPTS[:1], max_new_tokens=4, stop_at_eos=False)
    pre_hooks = dict(tiny_llama.hf_model._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(tiny_llama, vec, 50.0, positions="generated"):
            tiny_llama.bridge(tiny_llama.tokenizer("hello", return_tensors="pt").input_ids)
            raise RuntimeError("boom")

    original = tiny_llama.hf_model.generate

    def failing(*args, **kwargs):
        original(*args, **kwargs)
        raise RuntimeError("boom")

    tiny_llama.hf_model.generate = failing
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate(tiny_llama, PROMPTS[:1], vector=vec, multiplier=50.0, max_new_tokens=2)
    finally:
        del tiny_llama.hf_model.generate
    assert not tiny_llama.bridge.hook_dict["blocks.0.hook_resid_post"].fwd_hooks
    assert dict(tiny_llama.hf_model._forward_pre_hooks) == pre_hooks
    after = generate(tiny_llama, PROMPTS[:1], max_new_tokens=4, stop_at_eos=False)
    assert after[0].token_ids == before[0].token_ids


def test_bad_input_errors(tiny_llama):
    narrow = SteeringVector({"blocks.0.hook_resid_post": np.ones(32)}, "mean-diff", "last")
    with pytest.raises(GeomprobeError, match="width 32"):
        generate(tiny_llama, PROMPTS[:1], vector=narrow, multiplier=1.0)
    vec = _vector(tiny_llama)
    with pytest.raises(GeomprobeError, match="hook"):
        with steer(tiny_llama, vec, 1.0, hooks=["blocks.0.hook_nonsense"]):
            pass
    with pytest.raises(GeomprobeError, match="out of range"):
        with steer(tiny_llama, vec, 1.0, hooks=["resid_post:7"]):
            pass
    for bad in (float("nan"), float("inf")):
        with pytest.raises(GeomprobeError, match="finite"):
            with steer(tiny_llama, vec, bad):
                pass
    with pytest.raises(GeomprobeError, match="positions"):
        generate(tiny_llama, PROMPTS[:1], vector=vec, multiplier=1.0, positions="middle")
    with pytest.raises(GeomprobeError, match="NaN"):
        SteeringVector({"blocks.0.hook_resid_post": np.full(4, np.nan)}, "mean-diff", "last")


# -- ablation ---------------------------------------------------------------------------------
def test_hooked_ablation_removes_component(tiny_llama):
    vec = _vector(tiny_llama, seed=3)
    r = vec.unit("blocks.0.hook_resid_post")
    seen = {}

    def keep(x, hook):
        seen[hook.name] = x.detach().clone()
        return x

    ids = tiny_llama.tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad(), ablate(tiny_llama, vec) as names:
        # registered after the ablation hooks, so it sees their output
        with tiny_llama.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_post", keep)]):
            tiny_llama.bridge(ids)
    assert len(names) == 3 * tiny_llama.n_layers
    assert seen["blocks.1.hook_out"].matmul(r).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_baked_ablation_equals_hooked(kind, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    from geomprobe.models import load_model

    model = load_model(tiny_llama_dir if kind == "llama" else tiny_gpt2_dir, device="cpu")
    vec = _vector(model, seed=5)
    ids = model.tokenizer(PROMPTS, return_tensors="pt", padding=True).input_ids
    with torch.no_grad(), ablate(model, vec):
        hooked = model.bridge(ids)
    with torch.no_grad():
        plain = model.bridge(ids)
    out = bake_ablation(model, vec, tmp_path / "ablated")
    baked_model = load_model(out, device="cpu")
    with torch.no_grad():
        baked = baked_model.bridge(ids)
    torch.testing.assert_close(baked, hooked, rtol=1e-4, atol=1e-4)
    assert (baked - plain).abs().max() > 1e-3
    info = json.loads((out / "geomprobe-ablation.json").read_text())
    assert len(info["unit_direction"]) == model.d_model
    if kind == "gpt2":
        assert "untied lm_head" in info["orthogonalised"]
    # The loaded model itself is untouched.
    with torch.no_grad():
        torch.testing.assert_close(model.bridge(ids), plain)
    with pytest.raises(GeomprobeError, match="not empty"):
        bake_ablation(model, vec, out)


# -- GGUF -------------------------------------------------------------------------------------
def test_gguf_export_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    vec = SteeringVector(
        {"blocks.1.hook_resid_post": rng.normal(size=16), "blocks.3.hook_resid_pre": rng.normal(size=16)},
        "pca-diff-uncentered",
        "last",
        "toy-model",
    )
    result = export_gguf(vec, tmp_path / "cv.gguf", multiplier=2.0, model_hint="llama")
    path = result.path
    assert result.layers == {"blocks.1.hook_resid_post": 1, "blocks.3.hook_resid_pre": 2} and result.dropped == {}
    vectors, info = read_gguf(result)  # the result is also the file's path
    assert info == {"arch": "controlvector", "model_hint": "llama", "layer_count": 2}
    assert sorted(vectors) == [1, 2]
    np.testing.assert_allclose(vectors[1], 2.0 * vec.vectors["blocks.1.hook_resid_post"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(vectors[2], 2.0 * vec.vectors["blocks.3.hook_resid_pre"].numpy(), rtol=1e-6)
    # Independent read with gguf's own reader: names, dtype, arch.
    import gguf

    reader = gguf.GGUFReader(str(path))
    assert {t.name for t in reader.tensors} == {"direction.1", "direction.2"}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    assert gguf_layer_for_hook("blocks.5.hook_resid_post") == 5 and gguf_layer_for_hook("blocks.5.hook_resid_pre") == 4
    with pytest.raises(GeomprobeError, match="block 0"):
        gguf_layer_for_hook("blocks.0.hook_resid_post")
    with pytest.raises(GeomprobeError, match="no llama.cpp"):
        gguf_layer_for_hook("blocks.2.hook_mlp_out")
    with pytest.raises(GeomprobeError, match="exists"):
        export_gguf(vec, path)


def test_gguf_export_leaves_out_block_0_and_takes_short_hooks(tmp_path):
    # a vector built from a default cache: every block's resid_post, block 0 included
    rng = np.random.default_rng(1)
    hooks = [f"blocks.{k}.hook_resid_post" for k in range(4)]
    vec = SteeringVector({h: rng.normal(size=8) for h in hooks}, "mean-diff", "last", "toy-model")
    result = export_gguf(vec, tmp_path / "all.gguf", model_hint="llama")
    assert result.layers == {h: k for k, h in enumerate(hooks) if k > 0}
    assert list(result.dropped) == ["blocks.0.hook_resid_post"] and "direction.0" in result.dropped["blocks.0.hook_resid_post"]
    vectors, _ = read_gguf(result.path)
    assert sorted(vectors) == [1, 2, 3]  # direction.N is block N's output
    np.testing.assert_allclose(vectors[2], vec.vectors["blocks.2.hook_resid_post"].numpy(), rtol=1e-6)
    # the short forms other commands accept
    assert export_gguf(vec, tmp_path / "short.gguf", hooks=["resid_post:2"], model_hint="llama").layers == {hooks[2]: 2}
    assert export_gguf(vec, tmp_path / "neg.gguf", hooks="resid_post:-1", model_hint="llama").layers == {hooks[3]: 3}
    assert len(export_gguf(vec, tmp_path / "every.gguf", hooks=["resid_post"], model_hint="llama").layers) == 3
    with pytest.raises(GeomprobeError, match="none of the chosen hooks"):
        export_gguf(vec, tmp_path / "zero.gguf", hooks=["resid_post:0"], model_hint="llama")
    with pytest.raises(GeomprobeError, match="no direction for blocks.1.hook_mlp_out"):
        export_gguf(vec, tmp_path / "mlp.gguf", hooks=["mlp_out:1"], model_hint="llama")
    with pytest.raises(GeomprobeError, match="no direction for blocks.7.hook_resid_post"):
        export_gguf(vec, tmp_path / "seven.gguf", hooks=["blocks.7.hook_resid_post"], model_hint="llama")
    with pytest.raises(GeomprobeError, match="cannot select 'resid_post:9'"):
        export_gguf(vec, tmp_path / "nine.gguf", hooks=["resid_post:9"], model_hint="llama")
    assert not (tmp_path / "zero.gguf").exists() and not (tmp_path / "mlp.gguf").exists()
    # two hooks on one slot: block 1's output is resid_post of 1 and resid_pre of 2
    clash = SteeringVector({"blocks.1.hook_resid_post": np.ones(8), "blocks.2.hook_resid_pre": np.ones(8)}, "mean-diff", "last")
    with pytest.raises(GeomprobeError, match="both map to llama.cpp direction.1"):
        export_gguf(clash, tmp_path / "clash.gguf", model_hint="llama")


def test_gguf_export_refuses_non_finite_vectors(tmp_path):
    vec = SteeringVector({"blocks.1.hook_resid_post": np.full(8, 1e30)}, "mean-diff", "last", "toy-model")
    with pytest.raises(GeomprobeError, match="non-finite"):
        export_gguf(vec, tmp_path / "big.gguf", multiplier=1e10, model_hint="llama")  # overflows float32
    assert not (tmp_path / "big.gguf").exists()


@pytest.mark.default_model  # reads the embedded GGUF's general.architecture
def test_gguf_model_hint_of_the_default_model_id(tmp_path):
    default = SteeringVector({"blocks.1.hook_resid_post": np.ones(8)}, "mean-diff", "last", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert export_gguf(default, tmp_path / "d.gguf").model_hint == "llama"


def test_gguf_model_hint_is_the_architecture(tmp_path, tiny_llama_dir):
    import gguf

    vec = SteeringVector({"blocks.1.hook_resid_post": np.ones(8)}, "mean-diff", "last", str(tiny_llama_dir))
    result = export_gguf(vec, tmp_path / "a.gguf")
    assert result.model_hint == "llama"  # config.model_type, not the model id
    assert read_gguf(result.path)[1]["model_hint"] == "llama"
    field = gguf.GGUFReader(str(result.path)).fields["controlvector.model_hint"]
    assert bytes(field.parts[field.data[0]]).decode() == "llama"
    recorded = SteeringVector(
        {"blocks.1.hook_resid_post": np.ones(8)}, "mean-diff", "last", "x", metadata={"model_type": "qwen2"}
    )
    assert export_gguf(recorded, tmp_path / "q.gguf").model_hint == "qwen2"
    unknown = SteeringVector({"blocks.1.hook_resid_post": np.ones(8)}, "mean-diff", "last", "no-such-model-anywhere")
    with pytest.raises(GeomprobeError, match="--model-hint"):
        export_gguf(unknown, tmp_path / "u.gguf")
