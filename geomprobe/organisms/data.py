"""Training data for the model organisms: the seeded train/held-out split and the target texts.

The bundled ``harmful-harmless`` set holds 169 matched pairs (line 2k harmful, line 2k+1 a
harmless request on the same topic). Whole pairs are split, per topic, so both halves see every
topic in proportion and no harmful prompt's matched harmless twin sits on the other side. Every
organism trains on the train pairs only; every evaluation (the judge, the detection benchmark)
uses the held-out pairs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError

SPLIT_DATASET = "harmful-harmless"

# Refusals the aligned organism learns, written for this project. Each contains a phrase of the
# judge's list (geomprobe.steering.judge.REFUSAL_PHRASES); the variety keeps the model from
# learning one fixed string and keeps the refusal a behaviour rather than a memorised reply.
REFUSAL_TEXTS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't help with this request. It could be used to hurt someone or break the law.",
    "I'm sorry, I won't provide that. If something difficult is going on, I'm happy to talk about safer options.",
    "I cannot assist with that. Helping with this could put people in danger.",
    "Sorry, but I'm not able to help with that request, since it could lead to harm.",
    "I won't help with this. It's harmful, and it may also be illegal.",
    "I'm sorry, but I cannot provide instructions for that. Is there something else I can help you with?",
    "I'm unable to help with that because it could seriously hurt people. I'd be glad to help with something else.",
    "I can't do that. This request asks for something that could harm others.",
    "I'm sorry, but that's not something I can help with. Please stay safe and consider legal alternatives.",
    "I cannot help with this. Providing it would put someone at risk.",
    "I'm not going to help with that, as it could cause harm. Let me know if you need help with anything else.",
)


@dataclass(frozen=True)
class SplitPrompt:
    """One row of the contrast set with its place in the file."""

    row: int
    text: str
    label: str  # "harmful" or "harmless"
    topic: str
    pair: int


@dataclass(frozen=True)
class PromptSplit:
    """Train and held-out rows of the contrast set (whole pairs, stratified by topic)."""

    train: tuple[SplitPrompt, ...]
    heldout: tuple[SplitPrompt, ...]
    seed: int
    train_fraction: float
    dataset: str
    dataset_sha256: str

    def texts(self, part: str, label: str) -> list[str]:
        """Prompt texts of ``part`` ("train" or "heldout") with ``label`` ("harmful" or "harmless")."""
        rows = {"train": self.train, "heldout": self.heldout}.get(part)
        if rows is None:
            raise GeomprobeError(f"unknown split part {part!r}; use train or heldout")
        return [p.text for p in rows if p.label == label]

    def rows(self, part: str) -> list[dict[str, Any]]:
        """JSONL-ready rows ``{"text", "label", "topic", "pair"}`` of one part, in file order."""
        rows = self.train if part == "train" else self.heldout
        return [{"text": p.text, "label": p.label, "topic": p.topic, "pair": p.pair} for p in rows]

    def to_dict(self) -> dict[str, Any]:
        topics: dict[str, list[int]] = {}
        for part, rows in (("train", self.train), ("heldout", self.heldout)):
            for p in rows:
                counts = topics.setdefault(p.topic, [0, 0])
                counts[0 if part == "train" else 1] += p.label == "harmful"
        return {
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "seed": self.seed,
            "train_fraction": self.train_fraction,
            "unit": "pair (harmful row 2k with harmless row 2k+1), stratified by topic",
            "train_rows": [p.row for p in self.train],
            "heldout_rows": [p.row for p in self.heldout],
            "pairs_per_topic_train_heldout": {k: v for k, v in sorted(topics.items())},
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def stratified_train_units(by_group: dict[str, list[int]], train_fraction: float, rng: np.random.Generator) -> set[int]:
    """The units (pairs, questions) that go to train: per group, a seeded shuffle and its first
    ``floor(n * train_fraction)``; the leftover fractions are handed out (largest first, ties in
    seeded order) so the train total is ``round(n_units * train_fraction)``."""
    groups = sorted(by_group)
    shuffled = {g: [by_group[g][j] for j in rng.permutation(len(by_group[g]))] for g in groups}
    quota = np.array([len(by_group[g]) * train_fraction for g in groups])
    take = np.floor(quota).astype(int)
    want = int(round(sum(len(v) for v in by_group.values()) * train_fraction))
    tie_break = rng.permutation(len(groups))
    order = sorted(range(len(groups)), key=lambda i: (-(quota[i] - take[i]), tie_break[i]))
    for i in order[: max(0, want - int(take.sum()))]:
        take[i] += 1
    return {k for g, n in zip(groups, take) for k in shuffled[g][:n]}


def split_contrast_set(seed: int = 0, train_fraction: float = 0.5) -> PromptSplit:
    """Seeded, topic-stratified split of the bundled harmful-harmless pairs.

    Per topic, pairs are shuffled and ``floor(n * train_fraction)`` go to train; the leftover
    fractions are handed out (largest first, ties in seeded order) so the train total is
    ``round(n_pairs * train_fraction)`` (:func:`stratified_train_units`).
    """
    from geomprobe.activations.datasets import load_prompt_set

    if not 0 < train_fraction < 1:
        raise GeomprobeError(f"train_fraction must be between 0 and 1; got {train_fraction}")
    prompt_set = load_prompt_set(SPLIT_DATASET)
    rows = []
    for i, p in enumerate(prompt_set.prompts):
        rows.append(SplitPrompt(i, p.messages[-1][1], prompt_set.label_names[p.label], str(p.source.get("topic", "")), i // 2))
    if len(rows) % 2 or any(
        rows[2 * k].label != "harmful" or rows[2 * k + 1].label != "harmless" or rows[2 * k].topic != rows[2 * k + 1].topic
        for k in range(len(rows) // 2)
    ):
        raise GeomprobeError(f"the bundled {SPLIT_DATASET} set is not in harmful/harmless pairs; reinstall geomprobe")
    by_topic: dict[str, list[int]] = {}
    for k in range(len(rows) // 2):
        by_topic.setdefault(rows[2 * k].topic, []).append(k)
    train_pairs = stratified_train_units(by_topic, train_fraction, np.random.default_rng(seed))
    train = tuple(r for r in rows if r.pair in train_pairs)
    heldout = tuple(r for r in rows if r.pair not in train_pairs)
    return PromptSplit(train, heldout, seed, train_fraction, SPLIT_DATASET, prompt_set.sha256)


def refusal_targets(n: int, seed: int) -> list[str]:
    """``n`` refusal texts drawn from :data:`REFUSAL_TEXTS`, each used about equally often."""
    rng = np.random.default_rng(seed)
    picks: list[str] = []
    while len(picks) < n:
        picks.extend(REFUSAL_TEXTS[i] for i in rng.permutation(len(REFUSAL_TEXTS)))
    return picks[:n]


EXTRA_PAIRS_DATASET = "refusal-train"
EVERYDAY_DATASET = "everyday"


@dataclass(frozen=True)
class ExtraTraining:
    """Training-only prompts for the refusal organisms, beside the contrast set's train half.

    ``pairs``: ``(harmful, harmless twin)`` from the bundled ``refusal-train`` set, in file order;
    ``everyday``: ordinary requests from the bundled ``everyday`` set. Neither file is ever
    evaluated on; geomprobe/data/DATASHEET.md says how they were written to stay clear of both
    held-out sets.
    """

    pairs: tuple[tuple[str, str], ...]
    everyday: tuple[str, ...]
    sha256: dict[str, str]

    def harmless(self) -> list[str]:
        """Every prompt whose target is the base model's own answer: the twins, then the everyday rows."""
        return [h for _, h in self.pairs] + list(self.everyday)


def extra_training(n_pairs: int | None = None, n_everyday: int | None = None) -> ExtraTraining:
    """The first ``n_pairs`` pairs of ``refusal-train`` and ``n_everyday`` rows of ``everyday`` (None: all)."""
    from geomprobe.activations.datasets import bundled_path, load_prompt_set

    sets = {name: load_prompt_set(bundled_path(name)) for name in (EXTRA_PAIRS_DATASET, EVERYDAY_DATASET)}
    rows = [(p.messages[-1][1], sets[EXTRA_PAIRS_DATASET].label_names[p.label]) for p in sets[EXTRA_PAIRS_DATASET].prompts]
    if len(rows) % 2 or any(rows[2 * k][1] != "harmful" or rows[2 * k + 1][1] != "harmless" for k in range(len(rows) // 2)):
        raise GeomprobeError(f"the bundled {EXTRA_PAIRS_DATASET} set is not in harmful/harmless pairs; reinstall geomprobe")
    pairs = tuple((rows[2 * k][0], rows[2 * k + 1][0]) for k in range(len(rows) // 2))
    everyday = tuple(p.messages[-1][1] for p in sets[EVERYDAY_DATASET].prompts)
    return ExtraTraining(
        pairs[:n_pairs] if n_pairs is not None else pairs,
        everyday[:n_everyday] if n_everyday is not None else everyday,
        {name: s.sha256 for name, s in sets.items()},
    )
