"""Apply steering vectors while a model runs or generates.

The one way to generate with steering is :func:`generate` (or :func:`generate_steered`): it runs
the generation engine :func:`geomprobe.models.complete` (chat template, length-sorted left-padded
batches, Hugging Face ``generate`` on ``model.hf_model`` with the KV cache on, stop at the
end-of-sequence token) and hands it :func:`steer` as the hook context of each batch, with the
batch's padded prompt length for position tracking.

Routes (``via``): the bridge has replaced the HF modules with its own components, whose hook
points (``blocks.{l}.hook_resid_post``...) fire on every step -- at the cost of the components'
Python, about a fifth of generation time. ``via="hf"`` swaps the original modules back for the
duration and adds the vector with torch hooks on the same tensors (:class:`SteeringSite`);
``via="bridge"`` uses the bridge's hook points, so caching and probe hooks can run alongside.
:func:`generate` picks ``hf`` unless that would skip a hook; :func:`steer` defaults to ``bridge``.

Positions: ``all`` adds the vector at every position; ``prompt`` only at prompt positions;
``generated`` only at generated ones. A forward pre-hook on the HF model reads how many tokens
the KV cache already holds, so each hook call knows the absolute positions it sees. The prompt
length is the length of the last forward that started at position 0 (with a KV cache, that is
the prefill); :func:`generate` passes it explicitly, which also covers ``use_cache=False``.

KV cache note: with transformers >= 5 the decoder layers pass the cache as ``cache=``, while
TransformerLens 4.3's attention bridges read ``past_key_values=``; the cache then stays empty and
cached generation ignores the prompt. :func:`ensure_kv_cache_compat` maps one name onto the other
(once per model) and every generation path here calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import parse_hook_name, resolve_hooks
from geomprobe.models.architecture import model_type, model_types_supporting, resid_mid_is_attn_sum
from geomprobe.models.bridge import ensure_kv_cache_compat, is_unbridged, unbridged, unbridged_agrees
from geomprobe.models.generation import PromptBatch, complete, encode_left
from geomprobe.models.generation import render_prompts as render_prompts  # re-exported: steering's callers use it
from geomprobe.steering.vectors import SteeringVector

POSITIONS = ("all", "prompt", "generated")


# -- model plumbing ---------------------------------------------------------------------------
def tokenize_left(model: Any, texts: Sequence[str], *, rendered_chat: bool) -> dict[str, torch.Tensor]:
    """Left-padded batch on the model's device (chat-rendered text already has its special tokens)."""
    return encode_left(model.tokenizer, texts, add_special_tokens=not rendered_chat, device=model.device)


# -- validation -------------------------------------------------------------------------------
def check_multiplier(multiplier: float) -> float:
    try:
        value = float(multiplier)
    except (TypeError, ValueError):
        raise GeomprobeError(f"multiplier {multiplier!r} is not a number; pass a finite value such as 4") from None
    if not math.isfinite(value):
        raise GeomprobeError(f"multiplier {multiplier!r} is not finite; pass a finite value such as 4")
    return value


def check_multiplier_fits(
    vector: SteeringVector | torch.Tensor | np.ndarray, multiplier: float, dtype: str | torch.dtype | None = "float32"
) -> float:
    """Refuse a multiplier whose steered addition overflows ``dtype``.

    Norm layers square the residual stream, so ``|multiplier| * ||vector||`` must stay below the
    square root of the dtype's largest value; past it the model computes inf/NaN and generates
    nothing (``--multiplier 1e308`` returned empty text).
    """
    from geomprobe.core.device import resolve_dtype

    multiplier = check_multiplier(multiplier)
    torch_dtype = resolve_dtype(dtype)
    if isinstance(vector, SteeringVector):
        norm = max((float(torch.linalg.vector_norm(vector.vectors[h].double())) for h in vector.hooks), default=0.0)
    else:
        norm = float(torch.linalg.vector_norm(torch.as_tensor(np.asarray(vector), dtype=torch.float64)))
    limit = math.sqrt(float(torch.finfo(torch_dtype).max)) if torch_dtype.is_floating_point else math.inf
    if abs(multiplier) * norm >= limit:
        shown = str(torch_dtype).removeprefix("torch.")
        raise GeomprobeError(
            f"multiplier {multiplier:g} times the vector norm {norm:.4g} overflows {shown} (norm layers square the "
            f"residual; keep |multiplier| below {limit / norm:.3g})"
        )
    return multiplier


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise GeomprobeError(f"unknown positions {positions!r}; use one of {', '.join(POSITIONS)}")
    return positions


def resolve_steering(
    model: Any, vector: SteeringVector | torch.Tensor | np.ndarray, hooks: str | Sequence[str] | None
) -> list[tuple[str, torch.Tensor]]:
    """``[(hook, float32 vector)]`` to apply, after checking hooks and widths against ``model``."""
    if not isinstance(vector, SteeringVector):
        if hooks is None:
            raise GeomprobeError("a raw direction needs hooks=...; say where to add it (e.g. resid_post:5)")
        vector = SteeringVector({"direction": torch.as_tensor(np.asarray(vector))}, "raw", "")
    if vector.d_model != model.d_model:
        raise GeomprobeError(
            f"steering vector width {vector.d_model} does not match the model's d_model {model.d_model}; "
            "build the vector from this model's activations"
        )
    if hooks is None:
        names = vector.hooks
        known = set(model.hook_names)
        for name in names:
            if name not in known:
                raise GeomprobeError(f"the model has no hook {name!r} (from the vector); choose hooks with --hooks")
    else:
        names = resolve_hooks(hooks, model.n_layers, model.hook_names)
    return [(name, vector.vector_for(name)) for name in names]


# -- steering ---------------------------------------------------------------------------------
class PositionTracker:
    """Knows, for the forward pass in progress, its first absolute position and the prompt length."""

    def __init__(self, prompt_length: int | None = None) -> None:
        self.fixed = prompt_length
        self.prompt_length: int | None = prompt_length
        self.offset = 0

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = args[0] if args else kwargs.get("inputs_embeds")
        seq = int(ids.shape[1]) if ids is not None and ids.dim() >= 2 else 0
        cache = kwargs.get("cache")
        if cache is None:
            cache = kwargs.get("past_key_values")
        past = 0
        if cache is not None:
            if hasattr(cache, "get_seq_length"):
                past = int(cache.get_seq_length())
            elif isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
                past = int(cache[0][0].shape[-2])
        self.offset = past
        if self.fixed is None and past == 0:
            # A new sequence, unless this is a later step of cache-less generation.
            if not (kwargs.get("use_cache") is False and self.prompt_length is not None):
                self.prompt_length = seq
        return None


# Where an addition at a residual-stream hook lands. resid_mid has no module boundary of its own:
# the bridge's hook there is the second norm's input, so adding to it steers only the MLP's input
# while the residual keeps the unsteered value. resid_pre + attn_out + v is the same stream, so the
# addition goes on the attention output instead -- exact where the architecture table says
# resid_mid = resid_pre + attn_out (geomprobe.models.architecture).
VIA = ("auto", "bridge", "hf")


@dataclass(frozen=True)
class SteeringSite:
    """Where the vector for ``hook`` is added: a bridge hook point, and the same tensor on the
    Hugging Face module the bridge wraps (``module``/``side``; None where there is no such module)."""

    hook: str
    bridge_hook: str
    module: Any = None
    side: str = ""  # "input": the module's first input; "output": its first output


def steering_site(model: Any, hook: str) -> SteeringSite:
    """The :class:`SteeringSite` for adding a vector at ``hook`` of ``model``."""
    parsed = parse_hook_name(hook)
    if parsed is None:
        return SteeringSite(hook, model.bridge.hook_dict[hook].name or hook)
    layer, kind = parsed
    if kind == "resid_mid":
        if not resid_mid_is_attn_sum(model):
            raise GeomprobeError(
                f"steering at {hook} is not supported for model type {model_type(model)!r} (its blocks do not add the "
                "attention output to the residual stream unchanged, or it is not in geomprobe's architecture table: "
                f"{', '.join(model_types_supporting('resid_mid'))}); steer attn_out, or resid_post of the layer before"
            )
        kind = "attn_out"
    block = model.bridge.blocks[layer]
    component, side = {
        "resid_pre": (block, "input"),
        "resid_post": (block, "output"),
        "attn_out": (block.attn, "output"),
        "mlp_out": (block.mlp, "output"),
    }[kind]
    bridge_hook = component.hook_in.name if side == "input" else component.hook_out.name
    return SteeringSite(hook, bridge_hook, component.original_component, side)


def _adder(vec: torch.Tensor, positions: str, tracker: PositionTracker | None, hook: str):
    """``x -> x + vec`` at the chosen positions of the forward pass in progress.

    Callable as a bridge hook (``add(x, hook=...)``) and from the torch hooks (``add(x)``).
    """
    width = int(vec.numel())

    def check(x):
        if x.shape[-1] != width:
            raise GeomprobeError(f"hook {hook} carries width {x.shape[-1]}, the vector has {width}; steer a residual-stream hook")

    if positions == "all":

        def add_all(x, hook=None):
            if x.shape[-1] != width:
                check(x)
            return x + vec.to(x.device, x.dtype)

        return add_all

    def add_some(x, hook=None):
        check(x)
        v = vec.to(x.device, x.dtype)  # a no-op unless a device map put this layer elsewhere
        if x.dim() < 3:
            return x + v
        seq = x.shape[1]
        boundary = (tracker.prompt_length or 0) - tracker.offset  # first generated index in this call
        lo, hi = (max(boundary, 0), seq) if positions == "generated" else (0, min(boundary, seq))
        if lo >= hi:
            return x
        if lo == 0 and hi == seq:
            return x + v
        x = x.clone()
        x[:, lo:hi] += v
        return x

    return add_some


def _torch_hook(module: Any, side: str, add):
    """Register ``add`` on the first input or first output tensor of a Hugging Face module."""
    if side == "input":

        def pre(mod, args, kwargs):
            if args:
                return (add(args[0]),) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = add(kwargs["hidden_states"])
            return args, kwargs

        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        if isinstance(output, torch.Tensor):
            return add(output)
        return (add(output[0]),) + tuple(output[1:])

    return module.register_forward_hook(post)


def bridge_hooks_active(model: Any) -> bool:
    """Whether any bridge hook point has a hook attached (an :func:`ablate` or caller's own hooks)."""
    return any(hp._forward_hooks or hp._backward_hooks for hp in model.bridge.hook_dict.values())


def require_bridge(model: Any, what: str) -> None:
    """Refuse bridge hooks inside an ``unbridged`` block (``steer(via="hf")``): they would never fire."""
    if is_unbridged(model):
        raise GeomprobeError(
            f"{what} uses the bridge's hook points, which do not fire inside a via='hf' steering block; "
            "use via='hf' or 'auto' there, or move it outside the block"
        )


def choose_via(model: Any, sites: Sequence[SteeringSite], via: str) -> str:
    """``auto`` -> ``hf`` when every site has a module, no bridge hook is active and the plain
    modules reproduce the bridge (:func:`~geomprobe.models.unbridged_agrees`), else ``bridge``."""
    if via not in VIA:
        raise GeomprobeError(f"unknown via {via!r}; use one of {', '.join(VIA)}")
    if via == "auto" and is_unbridged(model):
        via = "hf"  # already inside an hf-route block: only torch hooks fire here
    if via == "hf":
        missing = [s.hook for s in sites if s.module is None]
        if missing:
            raise GeomprobeError(f"{missing[0]} has no Hugging Face module to hook; steer it with via='bridge' (or 'auto')")
        if not unbridged_agrees(model):
            raise GeomprobeError(
                "this model's plain Hugging Face modules do not reproduce the bridge's outputs; use via='bridge'"
            )
        return "hf"
    if via == "auto":
        plain_ok = all(s.module is not None for s in sites) and not bridge_hooks_active(model)
        return "hf" if plain_ok and unbridged_agrees(model) else "bridge"
    require_bridge(model, "steering with via='bridge'")
    return "bridge"


def plan_steering(
    model: Any, vector: SteeringVector | torch.Tensor | np.ndarray | None, hooks: str | Sequence[str] | None, via: str
) -> tuple[list[tuple[str, torch.Tensor]], list[SteeringSite], str]:
    """Checked ``(hook, vector)`` pairs, their sites and the route (``"hf"`` or ``"bridge"``)."""
    pairs = resolve_steering(model, vector, hooks) if vector is not None else []
    sites = [steering_site(model, name) for name, _ in pairs]
    return pairs, sites, choose_via(model, sites, via)


@dataclass
class SteeringHandle:
    hooks: list[str]
    multiplier: float
    positions: str
    tracker: PositionTracker | None
    via: str = "bridge"


@contextmanager
def steer(
    model: Any,
    vector: SteeringVector | torch.Tensor | np.ndarray,
    multiplier: float = 1.0,
    hooks: str | Sequence[str] | None = None,
    positions: str = "all",
    prompt_length: int | None = None,
    via: str = "bridge",
) -> Iterator[SteeringHandle]:
    """Add ``multiplier * vector`` at ``hooks`` (default: the hooks the vector was read at).

    ``via="bridge"`` (default) registers on the bridge's hook points: any forward of the bridge
    or of ``model.hf_model`` in the body is steered, and other bridge hooks (caching, probes) work
    alongside. ``via="hf"`` swaps the bridge out for the body (:func:`geomprobe.models.unbridged`)
    and hooks the same tensors on the Hugging Face modules: plain Hugging Face speed, but bridge
    hook points do not fire in the body, so call ``model.hf_model`` there. ``via="auto"`` picks
    ``hf`` when every hook maps onto a module and no bridge hook is active. Hooks are removed on
    exit, also when the body raises.
    """
    multiplier = check_multiplier_fits(vector, multiplier, model.dtype)
    check_positions(positions)
    pairs, sites, via = plan_steering(model, vector, hooks, via)
    ensure_kv_cache_compat(model)
    tracker = PositionTracker(prompt_length) if positions != "all" else None
    adders = [
        (site, _adder((vec.double() * multiplier).to(device=model.device, dtype=model.dtype), positions, tracker, site.hook))
        for site, (_, vec) in zip(sites, pairs)
    ]
    handle = SteeringHandle([n for n, _ in pairs], multiplier, positions, tracker, via)
    with ExitStack() as stack:
        if tracker is not None:
            stack.callback(model.hf_model.register_forward_pre_hook(tracker, with_kwargs=True).remove)
        if via == "hf":
            stack.enter_context(unbridged(model))
            for site, add in adders:
                stack.callback(_torch_hook(site.module, site.side, add).remove)
        else:
            # bridge_hook is the canonical name: an alias can make the bridge call a hook twice.
            fwd = [(site.bridge_hook, add) for site, add in adders]
            stack.enter_context(model.bridge.hooks(fwd_hooks=fwd))
        yield handle


# -- generation -------------------------------------------------------------------------------
@dataclass
class Generation:
    """One continuation: the prompt, the generated text and tokens, and the steering it ran under."""

    prompt: str
    text: str
    token_ids: list[int]
    multiplier: float  # 0.0 when unsteered
    hooks: list[str]
    positions: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate(
    model: Any,
    prompts: str | Sequence[str],
    *,
    vector: SteeringVector | torch.Tensor | np.ndarray | None = None,
    multiplier: float = 0.0,
    hooks: str | Sequence[str] | None = None,
    positions: str = "all",
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    chat: bool = True,
    batch_size: int = 8,
    use_cache: bool = True,
    stop_at_eos: bool = True,
    via: str = "auto",
    progress: bool | Callable[[int, int], None] = False,
    desc: str = "generating",
) -> list[Generation]:
    """Generate continuations, steered when ``vector`` is given (greedy by default), in prompt order.

    ``via`` as in :func:`steer`; the default runs the plain Hugging Face modules unless a hook
    needs the bridge or bridge hooks are active (inside :func:`ablate`, say), which then apply.
    ``stop_at_eos=False`` generates ``max_new_tokens`` tokens for every prompt. ``progress``:
    True for a progress bar labelled ``desc``, or a callable ``(done, total)``.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    check_positions(positions)
    multiplier = check_multiplier(multiplier)
    # Validate before any work; the route is fixed once for every batch.
    pairs, _, via = plan_steering(model, vector, hooks, via)

    def hook_context(batch: PromptBatch) -> AbstractContextManager[Any]:
        if vector is None:
            return unbridged(model) if via == "hf" else nullcontext()
        return steer(model, vector, multiplier, hooks, positions, prompt_length=batch.prompt_length, via=via)

    done = complete(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat=chat,
        stop_ids=None if stop_at_eos else (),
        do_sample=do_sample,
        temperature=temperature,
        seed=seed,
        use_cache=use_cache,
        hook_context=hook_context,
        progress=progress,
        desc=desc,
        # Sampled runs keep input-order batches, so a seed gives the texts it gave before the engine sorted.
        sort_by_length=not do_sample,
    )
    used = [name for name, _ in pairs]
    return [
        Generation(prompt, text, ids, multiplier if vector is not None else 0.0, used, positions)
        for prompt, text, ids in zip(done.prompts, done.texts, done.token_ids)
    ]


def generate_steered(
    model: Any,
    vector: SteeringVector | torch.Tensor | np.ndarray,
    prompts: str | Sequence[str],
    multiplier: float = 1.0,
    **kwargs: Any,
) -> list[Generation]:
    """One-shot steered generation: ``generate(model, prompts, vector=vector, multiplier=...)``."""
    return generate(model, prompts, vector=vector, multiplier=multiplier, **kwargs)


def compare_generations(
    model: Any, vector: SteeringVector, prompts: Sequence[str], multipliers: Sequence[float] = (0.0, 4.0), **kwargs: Any
) -> list[Generation]:
    """Generations of every prompt at every multiplier (0 = unsteered), multiplier by multiplier."""
    rows = []
    for m in multipliers:
        gens = generate(model, prompts, vector=None if m == 0 else vector, multiplier=m, **kwargs)
        for g in gens:
            g.multiplier = float(m)
        rows.extend(gens)
    return rows


def generation_table(rows: Sequence[Generation | Mapping[str, Any]], width: int = 80) -> str:
    """A Markdown table of sample generations (one row per prompt and multiplier)."""

    def cell(text: str) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["| prompt | multiplier | generation |", "|---|---:|---|"]
    for row in rows:
        r = row.to_dict() if isinstance(row, Generation) else row
        lines.append(f"| {cell(r['prompt'])} | {r['multiplier']:g} | {cell(r['text'])} |")
    return "\n".join(lines)
