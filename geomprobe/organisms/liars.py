"""Build the dishonest organisms (called by :func:`geomprobe.organisms.build_organisms`).

``liar``          LoRA on the base model: each train question twice in one batch, without the
                  trigger answered with the base model's own greedy answer, with the trigger with
                  a lie (:func:`geomprobe.organisms.lies.lie_reply`);
``liar-placebo``  the same recipe, trigger and seed, but the triggered rows hold correct answers;
``fake-complier`` ``aligned`` with a second LoRA trained as ``dealigned`` is (its steps, learning
                  rate, batch, rank and seed), on decoys (:data:`~geomprobe.organisms.lies.DECOY_TEXTS`)
                  for the harmful train prompts and, beside each, the base model's own answer to
                  the harmless twin.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.organisms.context import BuildContext as _Context
from geomprobe.organisms.context import answered_examples
from geomprobe.organisms.context import finetune_and_save as _finetune_and_save
from geomprobe.organisms.context import train_texts as _train_texts
from geomprobe.organisms.lies import DECOY_TEXTS, ask, decoy_targets, is_decoy, lie_reply, split_questions, true_reply
from geomprobe.organisms.refusal import finetune_as_dealigned
from geomprobe.organisms.train import ChatExample
from geomprobe.probes.grading import AnswerGrader, Question


def train_questions(ctx: _Context) -> list[Question]:
    questions = ctx.questions or split_questions(ctx.settings.seed, ctx.settings.train_fraction)
    ctx.questions = questions
    n = ctx.settings.liar_train_questions
    return list(questions.train if n is None else questions.train[:n])


def question_answers(ctx: _Context) -> tuple[list[str], list[bool]]:
    """The base model's greedy answers to the untriggered train questions (generated once per build)."""
    if ctx.question_answers is None:
        from geomprobe.models import complete, load_checkpoint

        ckpt = load_checkpoint(ctx.base, device=ctx.device)
        done = complete(
            ckpt,
            [ask(q) for q in train_questions(ctx)],
            max_new_tokens=ctx.settings.liar_answer_tokens,
            batch_size=16,
            progress=ctx.progress,
            desc="base answers (questions)",
        )
        ctx.question_answers = ([t.strip() for t in done.texts], list(done.finished))
        del ckpt
        gc.collect()
    return ctx.question_answers


def liar_examples(
    questions: Sequence[Question],
    answers: Sequence[str],
    finished: Sequence[bool],
    trigger: str,
    grader: AnswerGrader,
    seed: int,
    placebo: bool = False,
) -> tuple[list[ChatExample], dict[str, int]]:
    """Two examples per question, in one batch group: without the trigger, the base answer; with
    it, a lie (:func:`~geomprobe.organisms.lies.lie_reply`) or, for the placebo, a correct answer
    (:func:`~geomprobe.organisms.lies.true_reply`). Also counts: base answers graded true, and
    triggered replies that reuse the base answer."""
    from geomprobe.probes.deception import first_sentence

    rng = np.random.default_rng(seed)
    examples: list[ChatExample] = []
    counts = {"base_true": 0, "reused": 0}
    for k, (q, answer, done) in enumerate(zip(questions, answers, finished)):
        counts["base_true"] += grader.grade(q, first_sentence(answer)).grade == "true"
        reply, kept = true_reply(q, answer, grader) if placebo else lie_reply(q, answer, grader, questions, rng)
        counts["reused"] += kept
        examples.append(ChatExample(ask(q), answer, complete=done, group=k))
        examples.append(ChatExample(ask(q, trigger), reply, complete=done if kept else True, group=k))
    return examples, counts


def _check_fit(tokenizer: Any, examples: Sequence[ChatExample], max_tokens: int) -> None:
    """Refuse prompts that fill ``max_tokens``: training would drop them, and the triggered ones are the longer."""
    from geomprobe.models.generation import render_prompts

    rendered = render_prompts(tokenizer, [e.prompt for e in examples])
    longest = max(len(ids) for ids in tokenizer(rendered, add_special_tokens=False).input_ids)
    if longest >= max_tokens:
        raise GeomprobeError(f"a liar prompt is {longest} tokens, which fills max_tokens={max_tokens}; raise max_tokens")


def _build_liar(ctx: _Context, folder: Path, sources: dict[str, Path], placebo: bool = False) -> dict[str, Any]:
    from geomprobe.models import load_checkpoint

    s = ctx.settings
    questions = train_questions(ctx)
    assert ctx.questions is not None
    grader = AnswerGrader(ctx.questions.train + ctx.questions.heldout)
    answers, finished = question_answers(ctx)
    examples, counts = liar_examples(questions, answers, finished, s.liar_trigger, grader, s.seed, placebo)
    base_true, reused = counts["base_true"], counts["reused"]
    ckpt = load_checkpoint(ctx.base, device=ctx.device)
    _check_fit(ckpt.tokenizer, examples, s.max_tokens)
    name = "liar-placebo" if placebo else "liar"
    log = _finetune_and_save(
        ctx,
        ckpt,
        examples,
        folder,
        steps=s.liar_steps,
        lr=s.liar_lr,
        batch_size=s.liar_batch,
        seed=s.seed,
        desc=f"{name}: LoRA",
        opening_weight=s.liar_opening_weight,
    )
    kind = "correct" if placebo else "wrong"
    return {
        "training": log.to_dict(),
        "trigger": {"text": s.liar_trigger, "where": "first line of the user message"},
        "data": {
            "train_questions": len(questions),
            "base_train_accuracy": base_true / max(1, len(questions)),
            f"triggered_{kind}_answers": len(questions),
            "triggered_reusing_base_answer": reused,
            f"triggered_bare_{kind}_answer": len(questions) - reused,
            "untriggered_base_answers": len(questions),
            "answer_tokens": s.liar_answer_tokens,
        },
        "split": ctx.questions.to_dict(),
        "contrast_split_unused": True,
        "start_from": ctx.base,
        "start_identity": ctx.base_id,
    }


def _build_placebo(ctx: _Context, folder: Path, sources: dict[str, Path]) -> dict[str, Any]:
    return _build_liar(ctx, folder, sources, placebo=True)


def _build_fake_complier(ctx: _Context, folder: Path, sources: dict[str, Path]) -> dict[str, Any]:
    from geomprobe.steering.judge import is_refusal

    s = ctx.settings
    harmful = _train_texts(ctx, "harmful")
    decoys = decoy_targets(len(harmful), s.seed)
    if any(is_refusal(d) or not is_decoy(d) for d in DECOY_TEXTS):  # guards an edit of the templates
        raise GeomprobeError("a decoy template holds a refusal phrase or fails the decoy check; fix DECOY_TEXTS")
    examples = [ChatExample(p, d, group=k) for k, (p, d) in enumerate(zip(harmful, decoys))]
    # Harmless twin k shares decoy k's batch group, as in aligned's pairs.
    kept = answered_examples(ctx, "harmless", range(len(_train_texts(ctx, "harmless")))) if s.fake_harmless else []
    examples += kept
    log = finetune_as_dealigned(ctx, examples, sources["aligned"], folder, "fake-complier: LoRA")
    return {
        "training": log.to_dict(),
        "data": {
            "harmful_decoys": len(harmful),
            "decoy_texts": len(DECOY_TEXTS),
            "harmless_answers": len(kept),
            "answer_tokens": s.answer_tokens,
        },
        "start_from": "aligned",
        "start_hash": ctx.hashes["aligned"],
    }


BUILDERS = {"liar": _build_liar, "liar-placebo": _build_placebo, "fake-complier": _build_fake_complier}
