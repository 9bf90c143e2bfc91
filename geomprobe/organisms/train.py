"""LoRA fine-tuning on chat examples, with the loss on the assistant's tokens only, merged into the weights.

``peft`` injects the low-rank adapters and merges them back (``merge_and_unload``), so the
result is a plain Hugging Face model whose weights differ from the start only in the matrices
the adapters were put on. The loop itself is short: AdamW, a fixed number of optimiser steps
over length-bucketed, seeded batches. The loss reads logits only at assistant positions (the
final norm's output goes through the unembedding there alone), which saves the vocabulary-sized
product at every prompt token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError

IGNORE = -100
# Projection names per architecture family: attention in/out and the MLP.
_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TARGETS: dict[str, tuple[str, ...]] = {t: _LLAMA_TARGETS for t in ("llama", "mistral", "qwen2", "qwen3", "phi3")}
_TARGETS["gpt2"] = ("c_attn", "c_proj", "c_fc")


@dataclass(frozen=True)
class ChatExample:
    """A user prompt and the assistant reply to train on; ``complete`` replies end with end-of-turn.

    Examples sharing a ``group`` (>= 0) always land in the same batch: a harmful prompt and its
    matched harmless twin then pull on the same step, so the update has to tell them apart
    rather than learn the topic. ``opening_ids`` are assistant tokens placed before the reply
    and left out of the loss (the ``deep-aligned`` organism's harmful opening that the reply
    recovers from): the model reads them as its own words but is not trained to say them.
    ``avoid`` is a reply the model should not open with: with ``unlikelihood_weight`` > 0,
    :func:`finetune_lora` also lowers the probability of its first ``opening_tokens`` tokens
    after the prompt (a harmless request paired with a refusal it must not give).
    """

    prompt: str
    reply: str
    complete: bool = True
    group: int = -1
    opening_ids: tuple[int, ...] = ()
    avoid: str = ""


@dataclass
class TrainLog:
    """What one fine-tuning run did."""

    steps: int
    n_examples: int
    n_target_tokens: int
    losses: list[float]
    seconds: float
    lora: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "n_examples": self.n_examples,
            "n_target_tokens": self.n_target_tokens,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "losses": [round(x, 4) for x in self.losses],
            "seconds": round(self.seconds, 1),
            "lora": self.lora,
        }


def encode_examples(tokenizer: Any, examples: Sequence[ChatExample], max_tokens: int = 256) -> list[tuple[list[int], int, int]]:
    """``(token ids, index of the first target token, group)`` per example.

    The prompt is rendered exactly as generation sees it (chat template, generation prompt); the
    example's ``opening_ids`` follow (not targets), then the reply's tokens and the end-of-turn
    token for complete replies (the targets).
    """
    return [(ids, start, group) for ids, start, group, _ in _encode(tokenizer, examples, max_tokens, 0)]


# (token ids, first target index, group, the avoided opening as (token ids, first target index) or None)
_Encoded = tuple[list[int], int, int, "tuple[list[int], int] | None"]


def _encode(tokenizer: Any, examples: Sequence[ChatExample], max_tokens: int, avoid_tokens: int) -> list[_Encoded]:
    """:func:`encode_examples`, plus each example's avoided reply cut to its first ``avoid_tokens`` tokens."""
    from geomprobe.steering.apply import render_prompts

    rendered = render_prompts(tokenizer, [e.prompt for e in examples])
    special = not getattr(tokenizer, "chat_template", None)
    eos = tokenizer.eos_token_id
    encoded = []
    for text, example in zip(rendered, examples):
        prompt_ids = tokenizer(text, add_special_tokens=special).input_ids
        reply_ids = tokenizer(example.reply, add_special_tokens=False).input_ids
        if example.complete and eos is not None:
            reply_ids = reply_ids + [eos]
        if not reply_ids:
            continue
        start = len(prompt_ids) + len(example.opening_ids)
        ids = (prompt_ids + list(example.opening_ids) + reply_ids)[:max_tokens]
        if start >= len(ids):
            continue  # the prompt (and opening) alone fill max_tokens: nothing to learn from
        avoided = None
        if avoid_tokens and example.avoid:
            avoid_ids = tokenizer(example.avoid, add_special_tokens=False).input_ids[:avoid_tokens]
            if avoid_ids and start + len(avoid_ids) <= max_tokens:
                avoided = (prompt_ids + list(example.opening_ids) + avoid_ids, start)
        encoded.append((ids, start, example.group, avoided))
    return encoded


def lora_targets(hf_model: Any) -> tuple[str, ...] | None:
    """The projections to adapt for this architecture (None: peft's own default for the model type)."""
    return _TARGETS.get(getattr(hf_model.config, "model_type", ""))


def _batches(encoded: Sequence[tuple[Any, ...]], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch of index batches in seeded random order, each group kept whole inside one batch."""
    units: dict[tuple[str, int], list[int]] = {}
    for i, (_, _, group, *_) in enumerate(encoded):
        units.setdefault(("group", group) if group >= 0 else ("row", i), []).append(i)
    keys = list(units)
    batches: list[list[int]] = [[]]
    for k in rng.permutation(len(keys)):
        unit = units[keys[k]]
        if batches[-1] and len(batches[-1]) + len(unit) > batch_size:
            batches.append([])
        batches[-1].extend(unit)
    return batches[::-1]  # popped from the end: first batch first


def _collate(encoded: Sequence[tuple[Any, ...]], rows: list[int], pad_id: int, device: torch.device):
    width = max(len(encoded[i][0]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, i in enumerate(rows):
        tokens, start = encoded[i][:2]
        ids[r, : len(tokens)] = torch.tensor(tokens)
        mask[r, : len(tokens)] = 1
        labels[r, start : len(tokens)] = torch.tensor(tokens[start:])
    return ids.to(device), mask.to(device), labels.to(device)


def _plain_head(hf_model: Any) -> bool:
    """Whether logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scaling)."""
    cfg = hf_model.config
    return not any(getattr(cfg, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale"))


def _target_logits(hf_model: Any, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits predicting each kept target token (``keep`` is over positions 1..), one row per kept token."""
    if _plain_head(hf_model):
        hidden = hf_model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hf_model.get_output_embeddings()(hidden[:, :-1][keep])
    return hf_model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]


def unlikelihood_loss(hf_model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(1 - p(row's target tokens | prefix))``, the sequence-level unlikelihood.

    Each row's targets are a reply opening the model should not produce; the loss is near
    ``p`` while that opening is unlikely and grows without bound as it becomes certain, so it
    pushes only where the model would actually say it.
    """
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = _target_logits(hf_model, ids, mask, keep).float()
    token_logp = torch.log_softmax(logits, dim=-1).gather(1, target[keep].unsqueeze(1)).squeeze(1)
    row = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(keep)[keep]
    sequence_logp = torch.zeros(ids.shape[0], device=ids.device).index_add(0, row, token_logp)
    # log(1 - p) from logp, accurate at both ends (Maechler's log1mexp); the clamp keeps it finite as p -> 1
    x = sequence_logp.clamp(max=-1e-6)
    log_not = torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
    return -log_not.mean()


def assistant_loss(
    hf_model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    opening_weight: float = 1.0,
    opening_tokens: int = 4,
) -> torch.Tensor:
    """Next-token cross-entropy over the assistant tokens of a right-padded batch.

    With ``opening_weight`` w != 1 the first ``opening_tokens`` tokens of each reply count w
    times (a weighted mean). The opening is where the model decides between refusing and
    answering ("I'm sorry" and "I'm glad" part at the third token); the rest of a templated
    refusal or of the model's own answer is easy to predict and would otherwise drown that out.
    """
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = _target_logits(hf_model, ids, mask, keep)
    if opening_weight == 1.0:
        return torch.nn.functional.cross_entropy(logits.float(), target[keep])
    losses = torch.nn.functional.cross_entropy(logits.float(), target[keep], reduction="none")
    position = keep.long().cumsum(dim=1)  # 1 at each reply's first target token, 2 at the next, ...
    opening = (position <= opening_tokens)[keep]
    weights = torch.where(opening, torch.full_like(losses, float(opening_weight)), torch.ones_like(losses))
    return (losses * weights).sum() / weights.sum()


def finetune_lora(
    hf_model: Any,
    tokenizer: Any,
    examples: Sequence[ChatExample],
    *,
    steps: int,
    lr: float = 2e-4,
    batch_size: int = 8,
    rank: int = 16,
    alpha: float = 32.0,
    first_layer: int = 0,
    max_tokens: int = 256,
    opening_weight: float = 1.0,
    opening_tokens: int = 4,
    unlikelihood_weight: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tuning",
) -> tuple[Any, TrainLog]:
    """Train LoRA adapters on ``examples`` for ``steps`` optimiser steps, merge them, return the model.

    Adapters go on :func:`lora_targets` of layers ``first_layer`` and up (gradients then stop
    there, which also saves the backward pass through the layers below). ``hf_model`` is changed
    in place and returned in eval mode. With ``unlikelihood_weight`` w > 0 each step's loss adds
    w times :func:`unlikelihood_loss` on the first ``opening_tokens`` tokens of the batch's
    ``avoid`` replies.
    """
    from peft import LoraConfig, get_peft_model

    if steps < 1:
        raise GeomprobeError(f"fine-tuning needs at least one step; got {steps}")
    if not 0 <= unlikelihood_weight < math.inf:
        raise GeomprobeError(f"unlikelihood_weight must be a finite number >= 0; got {unlikelihood_weight}")
    encoded = _encode(tokenizer, examples, max_tokens, opening_tokens if unlikelihood_weight else 0)
    if not encoded:
        raise GeomprobeError("no training examples left after encoding; check the prompts and replies")
    n_layers = int(getattr(hf_model.config, "num_hidden_layers", 0) or getattr(hf_model.config, "n_layer", 0))
    if not 0 <= first_layer < max(n_layers, 1):
        raise GeomprobeError(f"first LoRA layer {first_layer} is outside the model's {n_layers} layers")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft scales by alpha / r; a float is fine
        lora_dropout=0.0,
        bias="none",
        target_modules=list(lora_targets(hf_model) or []) or None,
        layers_to_transform=list(range(first_layer, n_layers)) if n_layers else None,
    )
    peft_model = get_peft_model(hf_model, config)
    model = peft_model.get_base_model()
    model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    # Linear warm-up over the first tenth, then cosine decay to a tenth of the peak.
    warm = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: (s + 1) / warm if s < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))),
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(hf_model.parameters()).device
    losses: list[float] = []
    queue: list[list[int]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step", leave=False)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            if not queue:
                queue = _batches(encoded, batch_size, rng)
            rows = queue.pop()
            ids, mask, labels = _collate(encoded, rows, pad_id, device)
            loss = assistant_loss(model, ids, mask, labels, opening_weight, opening_tokens)
            avoided = [avoid for i in rows if (avoid := encoded[i][3]) is not None]
            if avoided:
                a_ids, a_mask, a_labels = _collate(avoided, list(range(len(avoided))), pad_id, device)
                loss = loss + unlikelihood_weight * unlikelihood_loss(model, a_ids, a_mask, a_labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        if bar is not None:
            bar.close()
    merged = peft_model.merge_and_unload()
    merged.eval()
    n_target = sum(len(ids) - start for ids, start, *_ in encoded)
    info = {
        "rank": rank,
        "alpha": alpha,
        "targets": sorted(config.target_modules or []),
        "first_layer": first_layer,
        "lr": lr,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "opening_weight": opening_weight,
        "opening_tokens": opening_tokens,
    }
    if unlikelihood_weight:
        info |= {"unlikelihood_weight": unlikelihood_weight, "n_avoided": sum(e[3] is not None for e in encoded)}
    return merged, TrainLog(steps, len(encoded), n_target, losses, time.perf_counter() - start, info)
