"""What every organism builder shares: the build's context, the train prompts and the base model's answers.

Kept apart from :mod:`geomprobe.organisms.build` so the builders in other modules
(:mod:`geomprobe.organisms.liars`) can use it without importing the module that calls them.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geomprobe.organisms.data import PromptSplit
from geomprobe.organisms.lies import QuestionSplit

# The train prompts the base model answers (train_texts): what the organisms train on as harmless
# answers or harmful compliance. Each label's answers are generated once per build, when a stale
# organism needs them.
ANSWER_LABELS = ("harmful", "harmless", "twins", "everyday")


@dataclass
class BuildContext:
    base: str
    base_id: str
    settings: Any  # geomprobe.organisms.OrganismSettings (build.py defines it and imports this module)
    split: PromptSplit
    hashes: dict[str, str]
    device: torch.device
    progress: bool
    answers: dict[str, tuple[list[str], list[bool]]]  # label -> base model's greedy answers to train prompts
    answer_labels: tuple[str, ...] = ANSWER_LABELS  # which answers this build will need
    questions: QuestionSplit | None = None
    question_answers: tuple[list[str], list[bool]] | None = None  # base model's answers to the train questions
    extra: Any = None  # extra_data's result, read from the bundled files once per build


def extra_data(ctx: BuildContext) -> Any:
    """The training-only pairs and everyday prompts of aligned's recipe (:func:`geomprobe.organisms.data.extra_training`)."""
    from geomprobe.organisms.data import extra_training

    if ctx.extra is None:
        ctx.extra = extra_training(ctx.settings.align_extra_pairs, ctx.settings.align_everyday)
    return ctx.extra


def train_texts(ctx: BuildContext, label: str) -> list[str]:
    """The train prompts of ``label``: "harmful" or "harmless" (the contrast set's train half),
    "twins" or "everyday" (the harmless twins of :func:`extra_data`'s pairs, its everyday prompts)."""
    if label == "twins":
        return [twin for _, twin in extra_data(ctx).pairs]
    if label == "everyday":
        return list(extra_data(ctx).everyday)
    texts = ctx.split.texts("train", label)
    return texts if ctx.settings.train_pairs is None else texts[: ctx.settings.train_pairs]


def base_answers(ctx: BuildContext, label: str) -> tuple[list[str], list[bool]]:
    """The base model's greedy answers to the train prompts of ``label`` (generated once per build)."""
    if label not in ctx.answers:
        from geomprobe.models import complete, load_checkpoint

        missing = [lab for lab in ANSWER_LABELS if lab not in ctx.answers and (lab in ctx.answer_labels or lab == label)]
        ckpt = load_checkpoint(ctx.base, device=ctx.device)
        prompts = [t for lab in missing for t in train_texts(ctx, lab)]
        done = complete(
            ckpt, prompts, max_new_tokens=ctx.settings.answer_tokens, batch_size=16, progress=ctx.progress, desc="base answers"
        )
        texts, finished = done.texts, done.finished
        start = 0
        for lab in missing:
            n = len(train_texts(ctx, lab))
            ctx.answers[lab] = (texts[start : start + n], finished[start : start + n])
            start += n
        del ckpt
        gc.collect()
    return ctx.answers[label]


def answered_examples(ctx: BuildContext, label: str, groups: Sequence[int] | None = None, repeats: int = 1) -> list[Any]:
    """The train prompts of ``label`` with the base model's answers as targets, ``repeats`` times each
    in a row, prompt i in batch group ``groups[i]`` (None: no group); answers that are empty or that
    the judge flags as refusals are dropped. Every organism that trains on base answers takes them here."""
    from geomprobe.organisms.train import ChatExample
    from geomprobe.steering.judge import is_refusal

    prompts = train_texts(ctx, label)
    answers, finished = base_answers(ctx, label) if prompts else ([], [])
    groups = [-1] * len(prompts) if groups is None else groups
    return [
        example
        for p, a, f, g in zip(prompts, answers, finished, groups)
        if a.strip() and not is_refusal(a)
        for example in [ChatExample(p, a.strip(), complete=f, group=g)] * repeats
    ]


def save_checkpoint(hf_model: Any, tokenizer: Any, folder: Path) -> None:
    hf_model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def finetune_and_save(
    ctx: BuildContext,
    ckpt: Any,
    examples: list[Any],
    folder: Path,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str,
    opening_weight: float = 1.0,
    unlikelihood_weight: float = 0.0,
) -> Any:
    """LoRA on the loaded checkpoint ``ckpt`` with the shared adapter settings (rank, alpha, first
    layer, max tokens), merged and saved to ``folder``; the training log. Every LoRA organism trains here."""
    from geomprobe.organisms.train import finetune_lora

    s = ctx.settings
    n_layers = int(ckpt.hf_model.config.num_hidden_layers)
    model, log = finetune_lora(
        ckpt.hf_model,
        ckpt.tokenizer,
        examples,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        rank=s.lora_rank,
        alpha=s.lora_alpha,
        first_layer=int(s.lora_first_layer * n_layers),
        max_tokens=s.max_tokens,
        opening_weight=opening_weight,
        unlikelihood_weight=unlikelihood_weight,
        seed=seed,
        progress=ctx.progress,
        desc=desc,
    )
    save_checkpoint(model, ckpt.tokenizer, folder)
    return log
