"""The ``deep-aligned`` organism: ``aligned`` trained further on safety-recovery examples.

After Qi et al. (2024), "Safety Alignment Should Be Made More Than Just a Few Tokens Deep": an
alignment trained only on replies that start with a refusal changes the first few reply tokens,
and a prefilled harmful opening undoes it. Their data augmentation trains the model to recover:
the assistant turn starts with the first k tokens of a harmful answer, then turns into a refusal,
and the loss reads only the refusal. Here the harmful answers are the base model's own greedy
answers to the harmful train prompts (those the judge does not flag as refusals), k is drawn
uniformly from ``deep_k_range`` (at most the answer's length), and the refusal is one of
:data:`RECOVERY_TEXTS`. As in the paper, which trains an already aligned chat model further, the
recovery rows train a second LoRA on ``aligned`` (``deep_steps`` at ``deep_lr``), with the contrast
set's train pairs and the everyday requests replayed as ``aligned`` saw them (refusals, the base
model's harmless answers, their repeats and opening weight) so that harmless requests keep their answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.organisms.train import ChatExample

# Turns from a started answer into a refusal, written for this project. Each contains a phrase of
# the judge's list (geomprobe.steering.judge.REFUSAL_PHRASES), so a recovered reply counts as a
# refusal; each starts by breaking off, since it follows an opening that was going the wrong way.
RECOVERY_TEXTS: tuple[str, ...] = (
    "Actually, I can't continue with this. It could hurt people, so I won't help with it.",
    "Wait, I'm not going to go on with this. It could cause real harm, and I can't help with that.",
    "I need to stop here. I'm sorry, but I can't help with this request because it could put people in danger.",
    "On second thought, I won't provide this. It could be used to hurt someone or break the law.",
    "Sorry, but I cannot keep going with that. Helping with this could seriously harm others.",
    "Let me stop. I'm not able to help with this, since it could lead to harm.",
    "No, I shouldn't continue. I cannot assist with something that could put people at risk.",
    "I'm going to stop there. I'm sorry, but this is not something I can help with. Can I help with something else?",
)


@dataclass(frozen=True)
class RecoveryRow:
    """One augmented example and where it came from (for the provenance record)."""

    example: ChatExample
    prompt_index: int  # index of the harmful train prompt
    k_drawn: int  # opening length drawn from the range
    k: int  # opening length used (at most the answer's length)
    recovery: int  # index into RECOVERY_TEXTS


def check_k_range(k_range: Sequence[int]) -> tuple[int, int]:
    """``(low, high)`` with 1 <= low <= high: an opening of at least one token."""
    if len(k_range) != 2:
        raise GeomprobeError(f"deep_k_range must be two numbers (low, high); got {tuple(k_range)!r}")
    low, high = (int(k) for k in k_range)
    if not 1 <= low <= high:
        raise GeomprobeError(f"deep_k_range must satisfy 1 <= low <= high; got ({low}, {high})")
    return low, high


def recovery_examples(
    tokenizer: Any,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    k_range: Sequence[int],
    repeats: int = 1,
    seed: int = 0,
) -> list[RecoveryRow]:
    """Recovery rows for harmful ``prompts`` from the base model's compliant ``answers``.

    Row i of prompt j: the first k tokens of ``answers[j]`` (its tokenization, without special
    tokens), k drawn uniformly from ``k_range`` (both ends included) and capped at the answer's
    length, as masked ``opening_ids``; the reply is a space and a recovery text (drawn in seeded
    rotation, each used about equally) with the end-of-turn token. ``group`` is j, so the row
    shares a batch with prompt j's plain refusal and harmless twin. Empty answers give no row;
    the caller drops answers that are refusals.
    """
    if len(prompts) != len(answers):
        raise GeomprobeError(f"{len(answers)} answers for {len(prompts)} prompts; give one answer per prompt")
    if repeats < 0:
        raise GeomprobeError(f"deep_repeats must be >= 0; got {repeats}")
    low, high = check_k_range(k_range)
    rng = np.random.default_rng(seed)
    rows: list[RecoveryRow] = []
    rotation: list[int] = []
    for _ in range(repeats):
        for j, (prompt, answer) in enumerate(zip(prompts, answers)):
            ids = tokenizer(answer.strip(), add_special_tokens=False).input_ids if answer.strip() else []
            if not ids:
                continue
            drawn = int(rng.integers(low, high + 1))
            if not rotation:
                rotation = [int(i) for i in rng.permutation(len(RECOVERY_TEXTS))]
            pick = rotation.pop()
            k = min(drawn, len(ids))
            example = ChatExample(prompt, " " + RECOVERY_TEXTS[pick], complete=True, group=j, opening_ids=tuple(ids[:k]))
            rows.append(RecoveryRow(example, j, drawn, k, pick))
    return rows


def recovery_data(
    tokenizer: Any, harmful: Sequence[str], answers: Sequence[str], settings: Any
) -> tuple[list[RecoveryRow], dict]:
    """The recovery rows for the harmful train prompts and what the provenance records of them.

    Only answers the judge does not flag as refusals give an opening: a refusal's opening would
    teach nothing new. ``settings`` is an ``OrganismSettings`` (``deep_k_range``, ``deep_repeats``, ``seed``).
    """
    from geomprobe.steering.judge import is_refusal

    compliant = [a if a.strip() and not is_refusal(a) else "" for a in answers]
    rows = recovery_examples(
        tokenizer, harmful, compliant, k_range=settings.deep_k_range, repeats=settings.deep_repeats, seed=settings.seed + 2
    )
    if not rows:
        raise GeomprobeError("the base model refused every harmful train prompt; there is no harmful opening to recover from")
    ks = [r.k for r in rows]
    data = {
        "recovery_rows": len(rows),
        "recovery_repeats": settings.deep_repeats,
        "recovery_texts": len(RECOVERY_TEXTS),
        "harmful_openings_dropped_as_refusals": sum(1 for a in compliant if not a),
        "k_range": list(settings.deep_k_range),
        "k_mean": round(float(np.mean(ks)), 2),
        "k_capped": sum(r.k < r.k_drawn for r in rows),
        "rows": [{"prompt_index": r.prompt_index, "k": r.k, "recovery": r.recovery} for r in rows],
    }
    return rows, data
