"""The one generation engine: every caller that lets a model write text goes through :func:`complete`.

It renders user prompts (the tokenizer's chat template with the generation prompt, or the text as
given), sorts them by token length so a batch pads little, left-pads each batch without touching
the tokenizer's own ``padding_side``, and calls Hugging Face ``generate`` with the KV cache on.
Each row stops at its own stop token ids (by default the tokenizer's end-of-sequence token and the
model's ``generation_config.eos_token_id``); a batch ends when every row has stopped or after
``max_new_tokens``. Results come back in input order as :class:`Completions`: the texts, the
generated token ids (up to, not including, the stop token) and whether each row stopped.

Why Hugging Face ``generate`` rather than an own KV-cache loop: its greedy decoding is what every
caller produced before this engine existed (token for token, with the model's own
``generation_config`` processors), and it handles position ids under left padding and the
bridge's KV-cache fix (:func:`~geomprobe.models.ensure_kv_cache_compat`) alike.

Hooks: ``hook_context(batch)`` is entered around each batch's generation. Steering passes its
:func:`~geomprobe.steering.steer` block (with the batch's padded prompt length for position
tracking), the deception set passes :func:`~geomprobe.models.unbridged`; this module knows
nothing of either.

A model comes as a :class:`~geomprobe.models.LoadedModel`, a :class:`~geomprobe.models.Checkpoint`
or a ``(hf_model, tokenizer)`` pair; :func:`as_generation_model` maps all three onto
:class:`GenerationModel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.validate import check_text
from geomprobe.models.bridge import ensure_kv_cache_compat
from geomprobe.models.loading import Checkpoint, LoadedModel


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationModel:
    """What generation needs of a model: the Hugging Face module, its tokenizer, where inputs go."""

    hf_model: Any
    tokenizer: Any
    device: torch.device


ModelLike = LoadedModel | Checkpoint | GenerationModel | tuple[Any, Any]


def as_generation_model(model: ModelLike) -> GenerationModel:
    """Map a ``LoadedModel``, a ``Checkpoint`` or a ``(hf_model, tokenizer)`` pair onto :class:`GenerationModel`.

    A ``LoadedModel``'s ``device`` is where its embeddings live (also under a device map); for the
    others it is the device of the first parameter, which is the embedding table.
    """
    if isinstance(model, GenerationModel):
        return model
    if isinstance(model, tuple):
        if len(model) != 2:
            raise GeomprobeError(f"a model pair must be (hf_model, tokenizer); got a tuple of {len(model)}")
        hf_model, tokenizer = model
        device = None
    elif hasattr(model, "hf_model") and hasattr(model, "tokenizer"):
        hf_model, tokenizer, device = model.hf_model, model.tokenizer, getattr(model, "device", None)
    else:
        raise GeomprobeError(
            f"cannot generate with a {type(model).__name__}; pass a LoadedModel (load_model), a Checkpoint "
            "(load_checkpoint) or an (hf_model, tokenizer) pair"
        )
    if device is None:
        device = next(iter(hf_model.parameters())).device
    return GenerationModel(hf_model, tokenizer, torch.device(device))


# -- rendering and tokenising ------------------------------------------------------------------
def uses_chat_template(tokenizer: Any, chat: bool = True) -> bool:
    """Whether prompts are rendered with the chat template (asked for, and the tokenizer has one)."""
    return bool(chat and getattr(tokenizer, "chat_template", None))


def render_chat(
    tokenizer: Any, messages: Sequence[tuple[str, str]], *, continue_final: bool = False, where: str = "a prompt"
) -> str:
    """``messages`` (``(role, content)`` pairs) through the chat template: continuing the final
    message, or ending with the generation prompt. The one place a chat is rendered to text."""
    from jinja2 import TemplateError

    chat = [{"role": role, "content": content} for role, content in messages]
    try:
        if continue_final:
            return str(tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True))
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    except TemplateError as exc:
        raise GeomprobeError(
            f"{where}: the model's chat template refuses this chat ({exc}); fix the roles or pass --no-chat-template"
        ) from None


def render_prompts(tokenizer: Any, prompts: Sequence[str], chat: bool = True) -> list[str]:
    """User messages as the activation cache renders them: one user turn through the chat template
    with the generation prompt, or the text as given (``chat=False`` or no template)."""
    for i, text in enumerate(prompts):
        if not isinstance(text, str) or not text.strip():
            raise GeomprobeError(f"prompt {i + 1} must be a non-empty string, got {text!r}")
        check_text(text, f"prompt {i + 1}")
    if not uses_chat_template(tokenizer, chat):
        return list(prompts)
    return [render_chat(tokenizer, [("user", text)], where=f"prompt {i + 1}") for i, text in enumerate(prompts)]


def encode_left(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """A left-padded batch (``input_ids``, ``attention_mask``), on ``device`` when given.

    The side is passed per call, so the tokenizer's own ``padding_side`` is never changed.
    Chat-rendered text already holds its special tokens: pass ``add_special_tokens=False`` for it.
    """
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special_tokens)
    return {k: (v.to(device) if device is not None else v) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


# -- stopping ------------------------------------------------------------------------------------
def default_stop_ids(model: ModelLike) -> frozenset[int]:
    """The tokenizer's end-of-sequence id and every id in the model's ``generation_config.eos_token_id``."""
    gm = as_generation_model(model)
    ids = {gm.tokenizer.eos_token_id}
    configured = getattr(getattr(gm.hf_model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return frozenset(int(i) for i in ids if i is not None)


StopIds = Iterable[int] | Sequence[Iterable[int]] | None


def stop_ids_per_row(stop_ids: StopIds, n_rows: int, default: frozenset[int]) -> list[frozenset[int]]:
    """One stop set per row: ``None`` -> ``default``; a flat collection of ids -> the same for every
    row (empty: never stop early); a sequence of ``n_rows`` lists, tuples or sets -> one per row."""
    if stop_ids is None:
        return [default] * n_rows
    items: list[Any] = list(stop_ids)
    if items and all(isinstance(i, (list, tuple, set, frozenset)) for i in items):
        if len(items) != n_rows:
            raise GeomprobeError(f"{len(items)} stop-id lists for {n_rows} prompts; give one per prompt, or one shared list")
        return [frozenset(int(t) for t in row) for row in items]
    return [frozenset(int(t) for t in items)] * n_rows


class RowStops:
    """A Hugging Face stopping criterion (called as ``(input_ids, scores) -> done per row``) that
    stops each row at its own stop ids; ``generate`` ends once every row is done."""

    def __init__(self, stops: Sequence[frozenset[int]], device: torch.device) -> None:
        width = max((len(s) for s in stops), default=0) or 1
        table = torch.full((len(stops), width), -1, dtype=torch.long)
        for row, ids in enumerate(stops):
            table[row, : len(ids)] = torch.tensor(sorted(ids), dtype=torch.long)
        self.table = table.to(device)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        return (input_ids[:, -1:] == self.table).any(dim=-1)


# -- the engine ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptBatch:
    """One batch as generation sees it: which input rows, and their left-padded tokens."""

    rows: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def prompt_length(self) -> int:
        """The padded prompt length: the first generated token's position."""
        return int(self.input_ids.shape[1])


HookContext = Callable[[PromptBatch], AbstractContextManager[Any]]


@dataclass
class Completions:
    """Generations in input order: rendered prompts, texts, generated ids (stop token excluded) and
    whether each row stopped at a stop id (False: it ran to ``max_new_tokens``)."""

    prompts: list[str]
    rendered: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    finished: list[bool]

    def __len__(self) -> int:
        return len(self.texts)


def _progress_callback(progress: bool | Callable[[int, int], None], desc: str, total: int):
    """``(callback, close)`` for a progress callable or a tqdm bar (``progress=True``)."""
    if callable(progress):
        return progress, lambda: None
    if not progress:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="prompt", leave=False)
    return (lambda done, _total: bar.update(done - bar.n)), bar.close


def complete(
    model: ModelLike,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    chat: bool = True,
    stop_ids: StopIds = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    use_cache: bool = True,
    sort_by_length: bool = True,
    prefill_ids: Sequence[Sequence[int]] | None = None,
    hook_context: HookContext | None = None,
    progress: bool | Callable[[int, int], None] = False,
    desc: str = "generating",
) -> Completions:
    """Continue every prompt for up to ``max_new_tokens`` tokens (greedy unless ``do_sample``).

    ``stop_ids``: see :func:`stop_ids_per_row` (default: :func:`default_stop_ids`). ``do_sample``
    draws from the softmax at ``temperature`` (no top-k or top-p cut); ``seed`` seeds torch before
    each batch (``seed`` + the batch's first place in processing order). ``sort_by_length=False``
    keeps prompts in input order within and across batches (more padding, same greedy tokens).
    ``prefill_ids``: per prompt, token ids forced after the rendered prompt (the start of the reply,
    as ids so no re-tokenisation can merge them differently); the results hold only what follows.
    ``hook_context(batch)`` is entered around each batch. ``progress``: True for a tqdm bar, or a
    callable ``(done, total)``.
    """
    gm = as_generation_model(model)
    prompts = list(prompts)
    if not prompts:
        raise GeomprobeError("no prompts given; pass at least one")
    if max_new_tokens < 1:
        raise GeomprobeError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if batch_size < 1:
        raise GeomprobeError(f"batch_size must be >= 1; got {batch_size}")
    if do_sample and not (math.isfinite(temperature) and temperature > 0):
        raise GeomprobeError(f"sampling needs a temperature > 0, got {temperature!r}; pass e.g. 0.7, or decode greedily")
    tok = gm.tokenizer
    rendered = render_prompts(tok, prompts, chat)
    special = not uses_chat_template(tok, chat)
    stops = stop_ids_per_row(stop_ids, len(prompts), default_stop_ids(gm))
    order = list(range(len(prompts)))
    prompt_ids: list[list[int]] | None = None
    if prefill_ids is not None:
        if len(prefill_ids) != len(prompts):
            raise GeomprobeError(f"{len(prefill_ids)} prefills for {len(prompts)} prompts; give one (maybe empty) per prompt")
        prompt_ids = [
            list(ids) + [int(t) for t in extra]
            for ids, extra in zip(tok(rendered, add_special_tokens=special)["input_ids"], prefill_ids)
        ]
    if sort_by_length:
        lengths = [len(ids) for ids in (prompt_ids or tok(rendered, add_special_tokens=special)["input_ids"])]
        order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep input order
    ensure_kv_cache_compat(gm.hf_model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id, use_cache=use_cache, eos_token_id=None
    )  # stops are RowStops' job
    if do_sample:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    texts, finished = [""] * len(prompts), [False] * len(prompts)
    token_ids: list[list[int]] = [[] for _ in prompts]
    report, close = _progress_callback(progress, desc, len(prompts))
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if prompt_ids is None:
                enc = encode_left(tok, [rendered[i] for i in rows], add_special_tokens=special, device=gm.device)
            else:
                padded = tok.pad(
                    {"input_ids": [prompt_ids[i] for i in rows]}, padding=True, padding_side="left", return_tensors="pt"
                )
                enc = {k: padded[k].to(gm.device) for k in ("input_ids", "attention_mask")}
            batch = PromptBatch(rows, enc["input_ids"], enc["attention_mask"])
            if do_sample and seed is not None:
                torch.manual_seed(seed + start)
            criteria = RowStops([stops[i] for i in rows], gm.device)
            with torch.no_grad(), hook_context(batch) if hook_context is not None else nullcontext():
                out = gm.hf_model.generate(**enc, stopping_criteria=[criteria], **kwargs)
            for i, row in zip(rows, out[:, batch.prompt_length :].tolist()):
                cut = next((k for k, t in enumerate(row) if t in stops[i]), None)
                ids = row if cut is None else row[:cut]
                texts[i], token_ids[i], finished[i] = tok.decode(ids, skip_special_tokens=True), ids, cut is not None
            if report is not None:
                report(start + len(rows), len(order))
    finally:
        close()
    return Completions(prompts, rendered, texts, token_ids, finished)
