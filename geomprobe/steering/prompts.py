"""Validation prompts for ``steer search``: user messages of a prompt set, split by label and sampled.

The positive label's prompts are the ones the metric is measured on; the other labels' prompts
(or a second set) give the KL side-effect check. Which label is positive follows
:func:`geomprobe.core.labels.choose_positive` over the set's label names in sorted order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from geomprobe.core.labels import choose_positive


@dataclass
class ValidationPrompts:
    """User prompts to score (``prompts``) and to check side effects on (``harmless``)."""

    prompts: list[str]
    harmless: list[str]
    positive_label: str | None  # None: the set has no labels and every prompt is scored

    def sample(self, limit: int, seed: int = 0) -> ValidationPrompts:
        """At most ``limit`` prompts of each side, drawn without replacement by ``random.Random(seed)``
        (prompts first, then harmless, from one generator)."""
        rng = random.Random(seed)
        prompts = rng.sample(self.prompts, min(limit, len(self.prompts)))
        harmless = rng.sample(self.harmless, min(limit, len(self.harmless))) if self.harmless else []
        return ValidationPrompts(prompts, harmless, self.positive_label)


def user_prompts(spec: str) -> list[tuple[str, str]]:
    """``[(last user message, label name)]`` of a bundled set or a JSONL/CSV/TXT file (``""``: unlabelled)."""
    from geomprobe.activations.datasets import load_prompt_set

    prompts = load_prompt_set(spec)
    rows = []
    for p in prompts.prompts:
        users = [content for role, content in p.messages if role == "user"]
        label = prompts.label_names[p.label] if p.label >= 0 else ""
        rows.append((users[-1] if users else p.messages[-1][1], label))
    return rows


def split_by_label(rows: Sequence[tuple[str, str]], positive_label: str | None = None,
                   harmless: Sequence[str] | None = None) -> ValidationPrompts:
    """The positive label's texts to score, every other label's for the KL check (or ``harmless``)."""
    labels = sorted({label for _, label in rows if label})
    if labels:
        pos: str | None = labels[choose_positive(labels, positive_label)] if len(labels) > 1 else labels[0]
        prompts = [t for t, label in rows if label == pos]
        others = [t for t, label in rows if label != pos]
    else:
        pos, prompts, others = None, [t for t, _ in rows], []
    return ValidationPrompts(prompts, list(harmless) if harmless is not None else others, pos)


def validation_prompts(dataset: str, harmless: str | None = None, positive_label: str | None = None) -> ValidationPrompts:
    """:func:`split_by_label` of ``dataset``; ``harmless`` (a second set) replaces the other labels' prompts."""
    side = [t for t, _ in user_prompts(harmless)] if harmless else None
    return split_by_label(user_prompts(dataset), positive_label, side)
