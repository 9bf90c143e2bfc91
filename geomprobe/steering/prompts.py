"""Validation prompts for ``steer search``: user messages of a prompt set, split by label and sampled.

The positive label's prompts are the ones the metric is measured on; the other labels' prompts
(or a second set) give the KL side-effect check. Which label is positive follows
:func:`geomprobe.core.labels.choose_positive` over the set's label names in sorted order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.labels import choose_positive
from geomprobe.steering.apply import render_prompts
from geomprobe.steering.vectors import SteeringVector


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


def split_by_label(
    rows: Sequence[tuple[str, str]], positive_label: str | None = None, harmless: Sequence[str] | None = None
) -> ValidationPrompts:
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


# -- validation prompts vs the vector's build prompts ------------------------------------------
@dataclass
class BuildOverlap:
    """Which validation prompts the vector was built from (its sidecar's ``cache_path``, by rendered text).

    ``checked`` is False when the build prompts cannot be read (the vector came from a probe or
    from prompts, or its cache has moved); ``note`` says so, or what was held out or kept.
    """

    checked: bool
    source: str
    n_prompts: int
    n_overlap: int
    n_harmless: int
    n_harmless_overlap: int
    held_out: bool
    note: str

    @property
    def trained_on_validation(self) -> bool:
        """True when overlapping prompts were kept: the search then scores on training data."""
        return self.checked and not self.held_out and (self.n_overlap > 0 or self.n_harmless_overlap > 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trained_on_validation": self.trained_on_validation}


def vector_build_texts(vector: SteeringVector) -> tuple[set[str] | None, str]:
    """``(rendered texts the vector was built from, where they came from)``; None when unknown."""
    path = vector.metadata.get("cache_path")
    source = str(vector.metadata.get("source") or "unknown")
    if source != "cache" or not path:
        return None, f"the vector was built from {source}, which records no prompts"
    from pathlib import Path

    from geomprobe.activations.store import open_cache

    if not Path(str(path)).is_file():
        return None, f"the vector's cache {path} is no longer there"
    try:
        with open_cache(path) as cache:
            return set(cache.texts), str(path)
    except GeomprobeError as exc:
        return None, f"the vector's cache {path} cannot be read ({exc})"


def hold_out_build_prompts(
    vector: SteeringVector, tokenizer: Any, prompts: Sequence[str], harmless: Sequence[str], chat: bool = True
) -> tuple[list[str], list[str], BuildOverlap]:
    """Drop validation prompts whose rendered text the vector was built from.

    When every prompt of a side overlaps (e.g. searching on the dataset the vector's cache was
    made from), that side is kept whole and the returned :class:`BuildOverlap` says the search
    scores on the vector's own training prompts.
    """
    prompts, harmless = list(prompts), list(harmless)
    seen, source = vector_build_texts(vector)
    if seen is None:
        note = f"could not check whether the validation prompts were used to build the vector: {source}"
        return prompts, harmless, BuildOverlap(False, source, len(prompts), 0, len(harmless), 0, False, note)
    in_p = [r in seen for r in render_prompts(tokenizer, prompts, chat)] if prompts else []
    in_h = [r in seen for r in render_prompts(tokenizer, harmless, chat)] if harmless else []
    n_p, n_h = sum(in_p), sum(in_h)
    kept_p = [p for p, hit in zip(prompts, in_p) if not hit]
    kept_h = [p for p, hit in zip(harmless, in_h) if not hit]
    # each side is held out when something is left of it; otherwise kept whole and said so
    hold_p, hold_h = n_p > 0 and bool(kept_p), n_h > 0 and bool(kept_h)
    held_out = (n_p == 0 or hold_p) and (n_h == 0 or hold_h)
    n_prompts, n_harmless = len(prompts), len(harmless)
    prompts, harmless = (kept_p if hold_p else prompts), (kept_h if hold_h else harmless)
    if n_p == 0 and n_h == 0:
        note = "none of the validation prompts was used to build the vector"
    elif held_out:
        note = f"held out {n_p} prompt(s) and {n_h} harmless prompt(s) the vector was built from ({source})"
    else:
        note = (
            f"{n_p} of {n_prompts} prompt(s) and {n_h} of {n_harmless} harmless prompt(s) were used to build the "
            f"vector ({source}) and holding them out would leave none: the search scores on the vector's training "
            "prompts; pass --dataset/--harmless with other prompts for a fair validation"
        )
    return prompts, harmless, BuildOverlap(True, source, n_prompts, n_p, n_harmless, n_h, held_out, note)
