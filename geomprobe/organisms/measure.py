"""Refusal rates on the organisms' two held-out sets, with bootstrap intervals.

``heldout``   the half of the bundled ``harmful-harmless`` pairs the organisms do not train on
              (same topics and writing as the training half);
``heldout-2`` the bundled ``heldout-2`` set: 64 pairs on 16 topics that the contrast set does not
              have, written separately (geomprobe/data/DATASHEET.md), so a rate there says whether
              the refusal carries over to requests unlike any the organism saw.

Both are judged by :func:`geomprobe.steering.judge.judge_refusals` (greedy, refusal phrases,
percentile-bootstrap interval over prompts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from geomprobe.core.errors import GeomprobeError

HELDOUT_SETS: dict[str, str] = {
    "heldout": "held-out pairs of harmful-harmless (topics shared with the train pairs)",
    "heldout-2": "heldout-2.jsonl: 64 pairs on 16 topics absent from harmful-harmless",
}
SECOND_HELDOUT = "heldout-2"
LABELS = ("harmful", "harmless")


def load_second_heldout() -> dict[str, list[str]]:
    """The bundled ``heldout-2`` prompts per label, in file order."""
    from geomprobe.activations.datasets import bundled_path, load_prompt_set

    prompt_set = load_prompt_set(bundled_path(SECOND_HELDOUT))
    return {lab: [p.messages[-1][1] for p in prompt_set.prompts if prompt_set.label_names[p.label] == lab] for lab in LABELS}


def heldout_prompts(
    seed: int = 0, train_fraction: float = 0.5, limit: int | None = None, sets: Sequence[str] = tuple(HELDOUT_SETS)
) -> dict[str, dict[str, list[str]]]:
    """``{set: {label: prompts}}`` for the held-out sets; ``limit``: the first N per set and label."""
    from geomprobe.organisms.data import split_contrast_set

    unknown = [s for s in sets if s not in HELDOUT_SETS]
    if unknown:
        raise GeomprobeError(f"unknown held-out set {unknown[0]!r}; choose from {', '.join(HELDOUT_SETS)}")
    if limit is not None and limit < 1:
        raise GeomprobeError(f"limit must be >= 1; got {limit}")
    out: dict[str, dict[str, list[str]]] = {}
    if "heldout" in sets:
        split = split_contrast_set(seed, train_fraction)
        out["heldout"] = {lab: split.texts("heldout", lab) for lab in LABELS}
    if SECOND_HELDOUT in sets:
        out[SECOND_HELDOUT] = load_second_heldout()
    return {s: {lab: texts[:limit] for lab, texts in by_label.items()} for s, by_label in out.items()}


@dataclass
class HeldoutRefusals:
    """The judge's refusal rate of one model on each held-out set and label."""

    model: str
    judgements: dict[str, dict[str, Any]]  # set -> label -> RefusalJudgement
    max_new_tokens: int
    split_seed: int = 0
    limit: int | None = None
    sets: dict[str, str] = field(default_factory=lambda: dict(HELDOUT_SETS))

    def rate(self, part: str, label: str) -> float:
        return float(self.judgements[part][label].rate)

    def to_dict(self, include_text: bool = False) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "split_seed": self.split_seed,
            "limit": self.limit,
            "sets": {s: HELDOUT_SETS[s] for s in self.judgements},
            "rates": {
                s: {lab: j.to_dict(include_text) for lab, j in by_label.items()} for s, by_label in self.judgements.items()
            },
        }

    def table(self) -> str:
        """One line per set and label: rate, count and interval."""
        return "\n".join(
            f"  {part:10s} {label:9s} {j.summary()}"
            for part, by_label in self.judgements.items()
            for label, j in by_label.items()
        )


def measure_refusals(
    model: Any,
    *,
    seed: int = 0,
    train_fraction: float = 0.5,
    sets: Sequence[str] = tuple(HELDOUT_SETS),
    limit: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    n_bootstrap: int = 2000,
    device: str = "auto",
    progress: bool = False,
    model_id: str | None = None,
) -> HeldoutRefusals:
    """Refusal rates of ``model`` (a folder, ``"default"``, a ``LoadedModel`` or ``Checkpoint``) on the held-out sets.

    ``seed`` and ``train_fraction`` pick the split whose held-out half is ``heldout`` (use the
    organism's own: ``read_provenance(folder)["settings"]``). Every rate has a percentile-bootstrap
    interval over prompts (``n_bootstrap`` replicates, seed 0).
    """
    from geomprobe.steering.judge import judge_refusals

    prompts = heldout_prompts(seed, train_fraction, limit, sets)
    if isinstance(model, (str, os.PathLike)):
        from geomprobe.models import load_model

        model_id = model_id or str(model)
        model = load_model(model, device=device)
    judged: dict[str, dict[str, Any]] = {}
    for part, by_label in prompts.items():
        judged[part] = {
            lab: judge_refusals(
                model, texts, max_new_tokens=max_new_tokens, batch_size=batch_size, n_bootstrap=n_bootstrap, progress=progress
            )
            for lab, texts in by_label.items()
        }
    name = model_id or str(getattr(model, "model_id", "") or type(model).__name__)
    return HeldoutRefusals(name, judged, max_new_tokens, seed, limit)
