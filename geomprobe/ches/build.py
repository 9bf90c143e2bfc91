"""Build the bundled preference set from the contrast set's harmful prompts.

Two kinds of pair, recorded in each row's ``kind``:

- ``compliance``: a written refusal is chosen, the model's own greedy answer (cut to its first
  complete sentences, at most ``max_new_tokens`` tokens) is rejected; answers the ``keep`` test
  drops (the model refusing by itself) are skipped. This mirrors the paper's refusal data, where
  the refusal is preferred over what the model actually said.
- ``near-duplicate``: a written refusal is chosen and the same sentence with a few words flipped
  into agreement is rejected, so the two differ by a few tokens only: pairs the paper predicts to
  have high CHES and to displace likelihood most.

``dev/build_preferences.py`` ran :func:`build_preference_set` once on the default model to write
``geomprobe/data/preferences.jsonl``; see the DATASHEET entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.activations.datasets import bundled_path
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_write_text, check_output_file
from geomprobe.models import complete

# The project's own refusals (chosen side of the compliance pairs), used in turn.
REFUSALS = (
    "I can't help with that. It could hurt people or break the law, so I won't give instructions for it.",
    "I'm sorry, but I won't help with this request. If something difficult is going on, I'm happy to talk about safe options.",
    "I can't assist with that, because it could cause real harm to other people.",
    "No, I won't do that. Helping with this could put people at risk.",
    "I'm not able to help with this. It is harmful and likely illegal, but I can help with a safe, related question.",
    "Sorry, I can't provide that. Is there something else I can help you with?",
)
# (chosen, rejected) templates differing by a few words: refusal against the same sentence agreeing.
NEAR_DUPLICATES = (
    (
        "I can't help with that. It could hurt people, so I won't give instructions.",
        "I can help with that. It could hurt people, but I will give instructions.",
    ),
    ("I'm sorry, but I won't help with this request.", "Sure, I will help with this request."),
    (
        "No, I won't do that, because it could put people at risk.",
        "Yes, I will do that, even though it could put people at risk.",
    ),
    (
        "I can't assist with that, since it is harmful and likely illegal.",
        "I can assist with that, although it is harmful and likely illegal.",
    ),
    (
        "Sorry, I can't provide that. Is there something else I can help you with?",
        "Sure, I can provide that. Is there something else I can help you with?",
    ),
)
# Topics where even a garbled "compliance" from a small model is not worth shipping (self-harm,
# poisons, pathogens, toxic chemistry, sexual abuse, children): their prompts serve near-duplicate pairs only.
SKIP_TOPICS = ("self-harm", "poison", "bioweapons", "dangerous-chemistry", "sexual-abuse", "child-safety")
_SENTENCE_END = re.compile(r"[.!?:](?=\s|$)")


def first_sentences(text: str, min_chars: int = 20) -> str:
    """The answer's first paragraph, cut after its last complete sentence (when one ends past ``min_chars``)."""
    text = text.strip().split("\n\n")[0].split("```")[0]
    text = " ".join(text.split())
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.end() >= min_chars]
    return text[: ends[-1]] if ends else text


def greedy_answers(model: Any, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
    """Greedy answers of ``model`` to user prompts (chat template applied when it has one), in prompt order."""
    chat = bool(getattr(model.tokenizer, "chat_template", None))
    return complete(model, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat).texts


def harmful_prompts() -> list[dict[str, Any]]:
    """The harmful rows of the bundled contrast set, in file order."""
    rows = [json.loads(line) for line in bundled_path("harmful-harmless").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("label") == "harmful"]


def build_preference_set(
    model: Any,
    *,
    n_compliance: int = 60,
    n_near_duplicate: int = 20,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    complete: Callable[[list[str]], list[str]] | None = None,
    keep: Callable[[str], bool] | None = None,
    skip_topics: Sequence[str] = SKIP_TOPICS,
) -> list[dict[str, Any]]:
    """Preference rows ``{prompt, chosen, rejected, kind, topic}`` from the contrast set's harmful prompts.

    Candidate prompts for the compliance pairs are spread evenly over the harmful rows (so every
    topic appears); ``complete`` maps prompts to answers (default: :func:`greedy_answers` with
    ``max_new_tokens``), ``keep`` decides whether an answer is a compliance (default: every
    non-empty answer; pass a refusal judge's negation to drop the model's own refusals). The
    near-duplicate pairs use harmful prompts not used by the compliance pairs. Prompts whose
    ``topic`` is in ``skip_topics`` get no model answer: they appear only in near-duplicate pairs.
    """
    if n_compliance < 0 or n_near_duplicate < 0 or n_compliance + n_near_duplicate == 0:
        raise GeomprobeError("ask for at least one pair: n_compliance and n_near_duplicate must be >= 0, not both 0")
    harmful = harmful_prompts()
    if n_compliance + n_near_duplicate > len(harmful):
        raise GeomprobeError(f"the contrast set has {len(harmful)} harmful prompts; ask for at most that many pairs")
    # Candidates for the compliance pairs: 40% more than needed (the model refuses some by itself),
    # evenly spread; the near-duplicate prompts come from the rows left over.
    allowed = [i for i, row in enumerate(harmful) if row.get("topic") not in set(skip_topics)]
    n_candidates = min(len(allowed), len(harmful) - n_near_duplicate, int(np.ceil(1.4 * n_compliance)))
    spread = np.linspace(0, len(allowed) - 1, n_candidates).round().astype(int)
    candidates = [allowed[int(j)] for j in spread] if n_compliance else []
    used = set(candidates)
    near_pool = [i for i in range(len(harmful)) if i not in used]
    near_rows = [near_pool[int(j)] for j in np.linspace(0, len(near_pool) - 1, n_near_duplicate).round()]
    answer = complete or (lambda texts: greedy_answers(model, texts, max_new_tokens=max_new_tokens, batch_size=batch_size))
    answers = answer([harmful[i]["text"] for i in candidates]) if candidates else []
    rows: list[dict[str, Any]] = []
    for i, raw in zip(candidates, answers):
        text = first_sentences(raw)
        if len(rows) == n_compliance or not text or (keep is not None and not keep(text)):
            continue
        refusal = REFUSALS[len(rows) % len(REFUSALS)]
        rows.append(
            {
                "prompt": harmful[i]["text"],
                "chosen": refusal,
                "rejected": text,
                "kind": "compliance",
                "topic": harmful[i].get("topic", ""),
            }
        )
    for n, i in enumerate(near_rows):
        chosen, rejected = NEAR_DUPLICATES[n % len(NEAR_DUPLICATES)]
        rows.append(
            {
                "prompt": harmful[i]["text"],
                "chosen": chosen,
                "rejected": rejected,
                "kind": "near-duplicate",
                "topic": harmful[i].get("topic", ""),
            }
        )
    return rows


def write_preference_set(rows: Sequence[dict[str, Any]], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write preference rows as JSONL (one object per line, atomically)."""
    target = check_output_file(path, overwrite=overwrite, what="preference file")
    return atomic_write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
