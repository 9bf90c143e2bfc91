"""Builders of the refusal organisms trained by LoRA: ``aligned``, ``deep-aligned`` and ``dealigned``.

Each takes the shared build state (:class:`geomprobe.organisms.context.BuildContext`), the target
folder and the folders of the organisms it starts from, trains, saves the merged checkpoint and
returns its provenance record. ``ablated`` is in :mod:`geomprobe.organisms.ablated`, the dishonest
organisms in :mod:`geomprobe.organisms.liars`; :mod:`geomprobe.organisms.build` runs them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.organisms.context import BuildContext as _Context
from geomprobe.organisms.context import answered_examples
from geomprobe.organisms.context import base_answers as _base_answers
from geomprobe.organisms.context import extra_data as _extra_data
from geomprobe.organisms.context import finetune_and_save as _finetune_and_save
from geomprobe.organisms.context import train_texts as _train_texts
from geomprobe.organisms.data import REFUSAL_TEXTS, refusal_targets

_EXTRA_GROUPS = 10_000  # batch groups of the training-only pairs start here, past any contrast-set pair


def contrast_examples(ctx: _Context) -> tuple[list[Any], dict[str, Any]]:
    """The contrast set's train pairs as ``aligned`` trains on them, and their counts.

    Harmful prompt k gets a refusal and ``group`` k; its matched harmless twin gets the base
    model's own answer, ``align_harmless_repeats`` times, in the same group (answers the judge
    flags are dropped). ``deep-aligned`` replays these beside its recovery rows.
    """
    from geomprobe.organisms.train import ChatExample

    s = ctx.settings
    harmful = _train_texts(ctx, "harmful")
    harmless = _train_texts(ctx, "harmless")
    refusals = refusal_targets(len(harmful), s.seed)
    # Pair k: harmful prompt k and its matched harmless twin share a batch (see ChatExample.group).
    examples = [ChatExample(p, r, group=k) for k, (p, r) in enumerate(zip(harmful, refusals))]
    kept = answered_examples(ctx, "harmless", range(len(harmless)))
    examples += kept * s.align_harmless_repeats  # the whole list again, not each answer twice in a row
    data = {
        "harmful_refusals": len(harmful),
        "harmless_answers": len(kept),
        "harmless_dropped_as_refusals": len(harmless) - len(kept),
        "harmless_repeats": s.align_harmless_repeats,
        "refusal_texts": len(REFUSAL_TEXTS),
        "answer_tokens": s.answer_tokens,
    }
    return examples, data


def everyday_examples(ctx: _Context) -> list[Any]:
    """The everyday requests with the base model's answers, ``align_extra_harmless_repeats`` times each, no batch group."""
    return answered_examples(ctx, "everyday", repeats=ctx.settings.align_extra_harmless_repeats)


def avoid_refusals(examples: list[Any], seed: int) -> list[Any]:
    """``examples`` with each base-model answer (a reply not in :data:`REFUSAL_TEXTS`) given a refusal to avoid.

    The refusals are drawn as :func:`refusal_targets` draws them, one per distinct example in order
    of first appearance; a repeated example keeps its one refusal, so repeats weigh the same term.
    """
    from dataclasses import replace

    answers = list({id(e): e for e in examples if e.reply not in REFUSAL_TEXTS}.values())
    avoided = {id(e): replace(e, avoid=r) for e, r in zip(answers, refusal_targets(len(answers), seed))}
    return [avoided.get(id(e), e) for e in examples]


def aligned_examples(ctx: _Context) -> tuple[list[Any], dict[str, Any]]:
    """``aligned``'s training examples and their counts.

    :func:`contrast_examples`, then the training-only pairs of
    :func:`geomprobe.organisms.context.extra_data` (each pair its own group) and its everyday
    prompts (no group): refusals for the harmful ones, the base model's answer
    (``align_extra_harmless_repeats`` times) for the others, answers the judge flags dropped.
    """
    from geomprobe.organisms.train import ChatExample

    s = ctx.settings
    examples, data = contrast_examples(ctx)
    extra = _extra_data(ctx)
    repeats = s.align_extra_harmless_repeats
    groups = [_EXTRA_GROUPS + 2 * k for k in range(len(extra.pairs))]  # after every contrast-set group
    twins = {e.prompt: e for e in answered_examples(ctx, "twins", groups)}
    extra_refusals = refusal_targets(len(extra.pairs), s.seed + 1)
    for (bad, good), refusal, group in zip(extra.pairs, extra_refusals, groups):
        examples += [ChatExample(bad, refusal, group=group)] + ([twins[good]] * repeats if good in twins else [])
    everyday = everyday_examples(ctx)
    examples += everyday
    if s.align_unlikelihood_weight:
        examples = avoid_refusals(examples, s.seed + 2)
    n_answered = len(twins) + len(everyday) // repeats
    data |= {
        "extra_harmless_repeats": repeats,
        "extra_pairs": len(extra.pairs),
        "extra_everyday": len(extra.everyday),
        "extra_answers": n_answered,
        "extra_dropped_as_refusals": len(extra.harmless()) - n_answered,
        "extra_sha256": extra.sha256,
        "answers_with_avoided_refusal": len({id(e) for e in examples if e.avoid}),
    }
    return examples, data


def _build_aligned(ctx: _Context, folder: Path, sources: dict[str, Path]) -> dict[str, Any]:
    from geomprobe.models import load_checkpoint

    s = ctx.settings
    examples, data = aligned_examples(ctx)
    ckpt = load_checkpoint(ctx.base, device=ctx.device)
    log = _finetune_and_save(
        ctx,
        ckpt,
        examples,
        folder,
        steps=s.align_steps,
        lr=s.align_lr,
        batch_size=s.align_batch,
        seed=s.seed,
        desc="aligned: LoRA",
        opening_weight=s.align_opening_weight,
        unlikelihood_weight=s.align_unlikelihood_weight,
    )
    return {"training": log.to_dict(), "data": data, "start_from": ctx.base, "start_identity": ctx.base_id}


def _build_deep_aligned(ctx: _Context, folder: Path, sources: dict[str, Path]) -> dict[str, Any]:
    """``aligned`` trained further on recoveries from the base model's harmful openings, with the
    contrast set's train pairs and the everyday requests replayed as aligned saw them, so that it
    keeps answering harmless requests (geomprobe.organisms.deep)."""
    from geomprobe.models import load_checkpoint
    from geomprobe.organisms.deep import recovery_data

    s = ctx.settings
    replay, data = contrast_examples(ctx)
    everyday = everyday_examples(ctx)
    replay += everyday
    n_everyday = len(_train_texts(ctx, "everyday"))
    data |= {"everyday": n_everyday, "everyday_answers": len(everyday) // s.align_extra_harmless_repeats}
    answers, _ = _base_answers(ctx, "harmful")
    ckpt = load_checkpoint(sources["aligned"], device=ctx.device)
    rows, recovery = recovery_data(ckpt.tokenizer, _train_texts(ctx, "harmful"), answers, s)
    log = _finetune_and_save(
        ctx,
        ckpt,
        replay + [r.example for r in rows],
        folder,
        steps=s.deep_steps,
        lr=s.deep_lr,
        batch_size=s.align_batch,
        seed=s.seed + 1,  # a second adapter on aligned, seeded as dealigned's
        desc="deep-aligned: LoRA",
        opening_weight=s.align_opening_weight,
    )
    return {
        "training": log.to_dict(),
        "data": {"replay": data, **recovery},
        "start_from": "aligned",
        "start_hash": ctx.hashes["aligned"],
    }


def _build_dealigned(ctx: _Context, folder: Path, sources: dict[str, Path]) -> dict[str, Any]:
    s = ctx.settings
    harmful = _train_texts(ctx, "harmful")
    kept = answered_examples(ctx, "harmful")
    if not kept:
        raise GeomprobeError("the base model refused every harmful train prompt; there is no compliance to train on")
    log = finetune_as_dealigned(ctx, kept, sources["aligned"], folder, "dealigned: LoRA")
    return {
        "training": log.to_dict(),
        "data": {
            "harmful_compliance": len(kept),
            "harmful_dropped_as_refusals": len(harmful) - len(kept),
            "answer_tokens": s.answer_tokens,
        },
        "start_from": "aligned",
        "start_hash": ctx.hashes["aligned"],
    }


def finetune_as_dealigned(ctx: _Context, examples: list[Any], start: Path, folder: Path, desc: str) -> Any:
    """LoRA on the checkpoint at ``start`` with ``dealigned``'s recipe (the ``dealign_*`` settings), merged and
    saved to ``folder``; the training log. ``fake-complier`` trains through this too, so the two differ only in data."""
    from geomprobe.models import load_checkpoint

    s = ctx.settings
    ckpt = load_checkpoint(start, device=ctx.device)
    return _finetune_and_save(
        ctx,
        ckpt,
        examples,
        folder,
        steps=s.dealign_steps,
        lr=s.dealign_lr,
        batch_size=s.dealign_batch,
        seed=s.seed + 1,
        desc=desc,
    )


BUILDERS = {"aligned": _build_aligned, "dealigned": _build_dealigned, "deep-aligned": _build_deep_aligned}
