"""Steering's two routes: bridge hook points, and torch hooks on the plain Hugging Face modules.

The plain route swaps the bridge out while generating (``unbridged``); it must produce exactly the
numbers of the bridge route, hook the same tensors, and always put the bridge back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.models import load_model, unbridged
from geomprobe.steering import SteeringVector, ablate, generate, steer
from geomprobe.steering.apply import choose_via

PROMPTS = ["Tell me about the history of the Roman empire.", "Write a short poem about the sea."]
KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tiny_llama_dir, tiny_gpt2_dir):
    folder = tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir
    return load_model(folder, device="cpu")


def _vector(model, hook, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    return SteeringVector({hook: scale * rng.normal(size=model.d_model)}, "mean-diff", "last")


def _bridged_types(model):
    return [type(m).__name__ for m in model.hf_model.modules()]


def _ids(model):
    return model.tokenizer(PROMPTS[0], return_tensors="pt").input_ids


def test_unbridged_runs_the_same_modules_and_restores_the_bridge(tiny):
    ids = _ids(tiny)
    before = _bridged_types(tiny)
    with torch.no_grad():
        ref = tiny.bridge(ids)
        with unbridged(tiny) as hf:
            assert not any("Bridge" in t for t in _bridged_types(tiny))
            # Attention as loaded (the bridge forces eager), and back on exit.
            assert hf.config._attn_implementation == hf._geomprobe_loaded_attention == "sdpa"
            plain = hf(ids).logits
        assert _bridged_types(tiny) == before
        assert tiny.hf_model.config._attn_implementation == "eager"
        # GPT-2's bridge recomputes attention from the split q/k/v weights: last-bit differences.
        torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="boom"):
            with unbridged(tiny):
                raise RuntimeError("boom")
        assert _bridged_types(tiny) == before
        torch.testing.assert_close(tiny.bridge(ids), ref, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_hf_route_steers_the_same_tensor_as_the_bridge_route(tiny, kind):
    hook = f"blocks.1.hook_{kind}"
    vec = _vector(tiny, hook)
    ids = _ids(tiny)
    with torch.no_grad():
        base = tiny.bridge(ids)
        with steer(tiny, vec, 3.0, via="bridge") as h:
            assert h.via == "bridge"
            bridge = tiny.hf_model(ids).logits
        with steer(tiny, vec, 3.0, via="hf") as h:
            assert h.via == "hf"
            plain = tiny.hf_model(ids).logits
    assert not torch.allclose(bridge, base, atol=1e-3)  # the vector does something
    torch.testing.assert_close(plain, bridge, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
@pytest.mark.parametrize("kind", ["resid_pre", "resid_post", "mlp_out"])
def test_hf_route_generation_matches_bridge_route(tiny, kind, positions):
    vec = _vector(tiny, f"blocks.1.hook_{kind}", scale=6.0)
    kw = dict(vector=vec, multiplier=4.0, positions=positions, max_new_tokens=6, stop_at_eos=False)
    bridge = generate(tiny, PROMPTS, via="bridge", **kw)
    plain = generate(tiny, PROMPTS, via="hf", **kw)
    auto = generate(tiny, PROMPTS, **kw)
    unsteered = generate(tiny, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    assert [g.token_ids for g in plain] == [g.token_ids for g in bridge]
    assert [g.token_ids for g in auto] == [g.token_ids for g in bridge]
    assert [g.token_ids for g in bridge] != [g.token_ids for g in unsteered]


@pytest.mark.parametrize("via", ["bridge", "hf"])
def test_resid_mid_steering_moves_the_residual_stream(tiny, via):
    """resid_mid + v must flow on: resid_post = resid_mid + mlp_out must still hold after steering."""
    hook = "blocks.1.hook_resid_mid"
    names = [hook, "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    vec = _vector(tiny, hook)
    v = vec.vectors[hook].float()
    ids = _ids(tiny)
    captured = {}

    def keep(x, hook):
        captured[hook.name] = x.detach().clone()

    def run():
        captured.clear()
        if via == "bridge":
            fwd = [(tiny.bridge.hook_dict[n].name, keep) for n in names]
            with tiny.bridge.hooks(fwd_hooks=fwd):
                tiny.bridge(ids)
        else:  # read the same tensors from the plain modules
            block = tiny.bridge.blocks[1]
            with unbridged(tiny):
                hs = [
                    block.ln2.original_component.register_forward_pre_hook(
                        lambda m, a: captured.__setitem__("mid", a[0].detach().clone())
                    ),
                    block.mlp.original_component.register_forward_hook(
                        lambda m, a, o: captured.__setitem__("mlp", o.detach().clone())
                    ),
                    block.original_component.register_forward_hook(
                        lambda m, a, o: captured.__setitem__("post", (o[0] if isinstance(o, tuple) else o).detach().clone())
                    ),
                ]
                try:
                    tiny.hf_model(ids)
                finally:
                    for h in hs:
                        h.remove()
        return list(captured.values())  # resid_mid, mlp_out, resid_post: the order they fire in

    with torch.no_grad():
        mid0, _, _ = run()
        with steer(tiny, vec, 2.0, via=via):
            mid, mlp, post = run()
    torch.testing.assert_close(mid - mid0, (2.0 * v).expand_as(mid), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(post, mid + mlp, rtol=1e-5, atol=1e-5)


def test_resid_mid_refused_where_blocks_are_not_sequential(tiny, monkeypatch):
    monkeypatch.setattr(tiny.hf_model.config, "model_type", "gemma2")
    vec = _vector(tiny, "blocks.1.hook_resid_mid")
    with pytest.raises(GeomprobeError, match="resid_mid is not supported for model type 'gemma2'"):
        with steer(tiny, vec, 1.0):
            pass


def test_auto_keeps_the_bridge_while_bridge_hooks_are_active(tiny):
    """generate() inside ablate() must see the ablation: the plain route would skip its hooks."""
    vec = _vector(tiny, "blocks.0.hook_resid_post", seed=5)
    kw = dict(max_new_tokens=6, stop_at_eos=False)
    assert choose_via(tiny, [], "auto") == "hf"
    with ablate(tiny, vec):
        assert choose_via(tiny, [], "auto") == "bridge"
        ablated = generate(tiny, PROMPTS, **kw)
        with pytest.raises(GeomprobeError, match="via"):
            generate(tiny, PROMPTS, via="sideways", **kw)
    assert choose_via(tiny, [], "auto") == "hf"
    # Reference: the ablation as plain torch hooks on every block's input, attention and output.
    r = vec.vectors["blocks.0.hook_resid_post"].float()
    r = r / r.norm()

    def project(x):
        return x - (x @ r).unsqueeze(-1) * r

    handles = []
    with unbridged(tiny):
        for block in tiny.bridge.blocks:
            handles.append(
                block.original_component.register_forward_pre_hook(
                    lambda m, a, k: (
                        ((project(a[0]),) + tuple(a[1:]), k) if a else (a, {**k, "hidden_states": project(k["hidden_states"])})
                    ),
                    with_kwargs=True,
                )
            )
            for module in (block.attn.original_component, block.original_component):
                handles.append(
                    module.register_forward_hook(
                        lambda m, a, o: project(o) if isinstance(o, torch.Tensor) else (project(o[0]),) + tuple(o[1:])
                    )
                )
        try:
            reference = generate(tiny, PROMPTS, via="hf", **kw)
        finally:
            for h in handles:
                h.remove()
    assert [g.token_ids for g in ablated] == [g.token_ids for g in reference]


def test_hf_route_refuses_hooks_without_a_module(tiny):
    vec = SteeringVector({"blocks.0.ln1.hook_in": np.ones(tiny.d_model)}, "raw", "")
    with pytest.raises(GeomprobeError, match="no Hugging Face module"):
        with steer(tiny, vec, 1.0, via="hf"):
            pass
    with steer(tiny, vec, 1.0, via="auto") as handle:
        assert handle.via == "bridge"


def test_default_model_routes_agree(default_model):
    hook = f"blocks.{default_model.n_layers // 2}.hook_resid_post"
    vec = _vector(default_model, hook, scale=1.0)
    kw = dict(vector=vec, multiplier=4.0, positions="generated", max_new_tokens=8, stop_at_eos=False)
    assert [g.token_ids for g in generate(default_model, PROMPTS, via="hf", **kw)] == [
        g.token_ids for g in generate(default_model, PROMPTS, via="bridge", **kw)
    ]


def test_bridge_hooks_refused_inside_an_hf_block(tiny):
    """Bridge hook points cannot fire while the bridge is swapped out: say so instead of skipping them."""
    vec = _vector(tiny, "blocks.1.hook_resid_post")
    kw = dict(max_new_tokens=6, stop_at_eos=False)
    with steer(tiny, vec, 4.0, via="hf"):
        with pytest.raises(GeomprobeError, match="do not fire inside a via='hf'"):
            with steer(tiny, vec, 1.0, via="bridge"):
                pass
        with pytest.raises(GeomprobeError, match="do not fire inside a via='hf'"):
            with ablate(tiny, vec):
                pass
        inside = generate(tiny, PROMPTS, **kw)  # auto: the outer block's torch hooks apply
    steered = generate(tiny, PROMPTS, vector=vec, multiplier=4.0, **kw)
    assert [g.token_ids for g in inside] == [g.token_ids for g in steered]


def test_auto_keeps_the_bridge_where_the_plain_modules_disagree(tiny):
    """An architecture whose bridge changes the numbers must not be steered on the plain modules."""
    from geomprobe.models import unbridged_agrees

    hf = tiny.hf_model
    assert unbridged_agrees(tiny) and hf._geomprobe_unbridged_agrees is True
    vec = _vector(tiny, "blocks.1.hook_resid_post")
    seen = []
    keep = (tiny.bridge.hook_dict["blocks.0.hook_resid_post"].name, lambda x, hook: seen.append(1))
    # Only the bridge route runs the bridge's own component: a stand-in for an adapter that differs.
    shift = torch.linspace(-1.0, 1.0, tiny.d_model)  # not constant: LayerNorm would remove that
    skew = tiny.bridge.blocks[0].register_forward_hook(
        lambda m, a, o: (o[0] + shift,) + tuple(o[1:]) if isinstance(o, tuple) else o + shift
    )
    try:
        hf._geomprobe_unbridged_agrees = None
        with tiny.bridge.hooks(fwd_hooks=[keep]):
            assert not unbridged_agrees(tiny)
        assert seen == []  # the check ran with the caller's bridge hooks parked
        with steer(tiny, vec, 1.0, via="auto") as handle:
            assert handle.via == "bridge"
        with pytest.raises(GeomprobeError, match="do not reproduce the bridge"):
            with steer(tiny, vec, 1.0, via="hf"):
                pass
    finally:
        skew.remove()
        hf._geomprobe_unbridged_agrees = None
    assert unbridged_agrees(tiny)
