"""The TransformerBridge and the Hugging Face modules it wraps: swapping between them, and the
KV-cache fix that cached generation through the bridge needs.

``unbridged(model)`` runs the plain Hugging Face modules (no bridge hook point fires), at plain
Hugging Face speed; ``unbridged_agrees(model)`` checks once per model that they reproduce the
bridge; ``is_unbridged`` is the one reader of the flag that says a model is inside that block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch


def ensure_kv_cache_compat(model: Any) -> None:
    """Make the bridge's attention components see the KV cache that transformers 5 passes as ``cache``.

    TransformerLens 4.3's attention bridges read ``past_key_values=``; without this alias, cached
    generation through the bridge ignores the prompt after the first new token. Idempotent.
    """
    hf_model = model.hf_model if hasattr(model, "hf_model") else model
    if getattr(hf_model, "_geomprobe_kv_compat", False):
        return

    def alias_cache(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
            return args, kwargs
        return None

    for module in hf_model.modules():
        if hasattr(module, "_update_kv_cache"):  # TransformerLens attention bridges
            module.register_forward_pre_hook(alias_cache, with_kwargs=True)
    hf_model._geomprobe_kv_compat = True


def _bridge_swaps(hf_model: Any) -> list[tuple[Any, str, Any, Any]]:
    """``(parent, name, bridge component, what it wraps)`` for every bridge component in the HF tree."""
    from torch import nn
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    def is_bridge(m: Any) -> bool:
        return isinstance(m, GeneralizedComponent) and m.original_component is not None

    swaps: list[tuple[Any, str, Any, Any]] = []
    seen: set[int] = set()

    def visit(module: Any) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if is_bridge(child):
                swaps.append((module, name, child, child.original_component))
                visit(child.original_component)
            elif isinstance(child, nn.ModuleList) and len(child) and all(is_bridge(c) for c in child):
                originals = nn.ModuleList([cast(nn.Module, c.original_component) for c in child])
                swaps.append((module, name, child, originals))
                for original in originals:
                    visit(original)
            else:
                visit(child)

    visit(hf_model)
    return swaps


def is_unbridged(model: Any) -> bool:
    """Whether ``model`` is inside an :func:`unbridged` block (its bridge hook points cannot fire)."""
    hf_model = model.hf_model if hasattr(model, "hf_model") else model
    return bool(getattr(hf_model, "_geomprobe_unbridged", False))


@contextmanager
def unbridged(model: Any) -> Iterator[Any]:
    """The wrapped Hugging Face model with the bridge's components swapped back for the modules
    they wrap, restored on exit (also when the body raises).

    Inside, ``model.hf_model`` runs at plain Hugging Face speed (the bridge's per-component Python
    costs about a fifth of generation time) and no bridge hook point fires; torch hooks on the
    original modules do. Same weights and modules as the bridge runs; attention goes back to the
    implementation the model was loaded with (SDPA, usually, where the bridge forces eager), so
    results match the bridge's to float rounding rather than bit for bit.
    """
    hf_model = model.hf_model if hasattr(model, "hf_model") else model
    if is_unbridged(hf_model):  # nested: already plain
        yield hf_model
        return
    swaps = _bridge_swaps(hf_model)
    done: list[tuple[Any, str, Any, Any]] = []
    config = hf_model.config
    bridge_attention = getattr(config, "_attn_implementation", None)
    loaded_attention = getattr(hf_model, "_geomprobe_loaded_attention", None)
    try:
        for parent, name, bridge, original in swaps:
            parent._modules[name] = original
            done.append((parent, name, bridge, original))
        # Only where every module reads the one config (text models), so no sub-model is left behind.
        configs = {id(c) for m in hf_model.modules() if hasattr(c := getattr(m, "config", None), "_attn_implementation")}
        if loaded_attention and loaded_attention != bridge_attention and configs == {id(config)}:
            config._attn_implementation = loaded_attention
        hf_model._geomprobe_unbridged = True
        yield hf_model
    finally:
        for parent, name, bridge, _ in reversed(done):
            parent._modules[name] = bridge
        if bridge_attention is not None and getattr(config, "_attn_implementation", None) != bridge_attention:
            config._attn_implementation = bridge_attention
        hf_model._geomprobe_unbridged = False


@contextmanager
def _bridge_hooks_parked(bridge: Any) -> Iterator[None]:
    """Detach every hook-point hook for the body (a check run must not feed the caller's hooks)."""
    from collections import OrderedDict

    parked = [(hp, hp._forward_hooks, hp._backward_hooks) for hp in bridge.hook_dict.values()]
    try:
        for hp, _, _ in parked:
            hp._forward_hooks, hp._backward_hooks = OrderedDict(), OrderedDict()
        yield
    finally:
        for hp, fwd, bwd in parked:
            hp._forward_hooks, hp._backward_hooks = fwd, bwd


def unbridged_agrees(model: Any) -> bool:
    """Whether the plain modules reproduce the bridge's logits on a short text; checked once per model.

    The bridge wraps each Hugging Face module and calls it, so they should, but some architectures'
    adapters reshape or recompute parts; where the two disagree, geomprobe keeps the bridge.
    """
    hf_model = model.hf_model
    known = getattr(hf_model, "_geomprobe_unbridged_agrees", None)
    if known is not None:
        return bool(known)
    if is_unbridged(hf_model):
        return True  # the caller has swapped the bridge out already; there is nothing to compare with
    ids = model.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    ids = ids.to(model.device)
    with torch.no_grad(), _bridge_hooks_parked(model.bridge):
        bridged = hf_model(input_ids=ids, use_cache=False).logits.float()
        with unbridged(model):
            plain = hf_model(input_ids=ids, use_cache=False).logits.float()
    # Eager vs SDPA attention and reordered sums differ in the last bits; half precision in more.
    tol = 1e-4 if model.dtype in (torch.float32, torch.float64) else 3e-2
    agrees = bool((plain - bridged).abs().max() <= tol * (1 + bridged.abs().max()))
    hf_model._geomprobe_unbridged_agrees = agrees
    return agrees
